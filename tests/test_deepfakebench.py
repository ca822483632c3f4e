"""DeepfakeBench dataset JSONs as a data source (``dfb:JSON[:SPLIT[:COMPRESSION[:METHODS[:ROOT]]]]``).

The fixture follows the structure that DeepfakeBench's ``preprocessing/rearrange.py`` writes (its
docstring and ``generate_dataset_file``) and ``training/dataset/abstract_dataset.py`` reads:
``{dataset: {method: {split: {video: {"label": method, "frames": [...]}}}}}``, with a compression level
(``c23``, ``c40``) between split and video for the FaceForensics++ family, FaceForensics++'s fakes also
carrying ``masks``; label names from ``training/config/train_config.yaml``'s ``label_dict``; frame paths
relative to DeepfakeBench's ``rgb_dir`` in the layout of its README (``FaceForensics++/original_sequences/
youtube/c23/frames/<video>/<n>.png``); Celeb-DF's ``val`` a copy of its ``test``; DFDC's ``val`` written as
a single video entry, as rearrange.py does.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsfm_fast import evaluate
from fsfm_fast.data.deepfakebench import parse_spec, read_samples
from fsfm_fast.data.labelled import samples_from
from fsfm_fast.finetune import deepfake as finetune
from fsfm_fast.formats import safe_load
from fsfm_fast.runtime.cli import UsageError

TINY = "fsfm_vit_tiny_patch16"
FF_FAKES = {"FF-DF": "Deepfakes", "FF-F2F": "Face2Face", "FF-FS": "FaceSwap", "FF-NT": "NeuralTextures"}
FF_SPLITS = {"train": [("000", "003"), ("001", "004")], "val": [("002", "005")], "test": [("006", "007")]}
FRAMES = 2


def _image(path: Path, fake: bool, seed: int) -> str:
    """A 40 px face stand-in: fakes brighter than reals, so a few steps can tell them apart."""
    rng = np.random.default_rng(seed)
    base = 150 if fake else 80
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(base + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)).save(path)
    return str(path)


def _frames(rgb: Path, folder: str, fake: bool, seed: int, windows: bool = False) -> list[str]:
    """Frame paths as DeepfakeBench lists them: relative to rgb_dir (Windows separators when asked)."""
    paths = []
    for n in range(FRAMES):
        rel = f"{folder}/{n:03d}.png"
        _image(rgb / rel, fake, seed * 10 + n)
        paths.append(rel.replace("/", "\\") if windows else rel)
    return paths[::-1]  # listed out of order: the reader sorts by frame number


def _write_ff(root: Path, rgb: Path) -> Path:
    methods = {"FF-real": {}} | {m: {} for m in FF_FAKES}
    seed = 0
    for split, pairs in FF_SPLITS.items():
        for method in methods:
            methods[method][split] = {"c23": {}, "c40": {}}
        for a, b in pairs:
            for video in (a, b):
                seed += 1
                frames = _frames(rgb, f"FaceForensics++/original_sequences/youtube/c23/frames/{video}", False, seed)
                methods["FF-real"][split]["c23"][video] = {"label": "FF-real", "frames": frames}
            for method, folder in FF_FAKES.items():
                seed += 1
                name = f"{a}_{b}"
                frames = _frames(rgb, f"FaceForensics++/manipulated_sequences/{folder}/c23/frames/{name}", True, seed,
                                 windows=method == "FF-NT")
                masks = [f.replace("frames", "masks") for f in frames]
                methods[method][split]["c23"][name] = {"label": method, "frames": frames, "masks": masks}
    path = root / "dataset_json" / "FaceForensics++.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"FaceForensics++": methods}))
    return path


def _write_celebdf(root: Path, rgb: Path) -> Path:
    data = {"CelebDFv2_real": {"train": {}, "val": {}, "test": {}}, "CelebDFv2_fake": {"train": {}, "val": {}, "test": {}}}
    seed = 500
    for label, folder, videos in (("CelebDFv2_real", "Celeb-real", ["id0_0000", "id1_0001"]),
                                  ("CelebDFv2_fake", "Celeb-synthesis", ["id0_id1_0000", "id1_id0_0001"])):
        for video in videos:
            seed += 1
            entry = {"label": label, "frames": _frames(rgb, f"Celeb-DF-v2/{folder}/frames/{video}", "fake" in label, seed)}
            data[label]["test"][video] = entry
            data[label]["val"][video] = entry  # rearrange.py: Celeb-DF's val is its test
    path = root / "dataset_json" / "Celeb-DF-v2.json"
    path.write_text(json.dumps({"Celeb-DF-v2": data}))
    return path


@pytest.fixture(scope="module")
def dfb(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dfb")
    rgb = root / "datasets" / "rgb"
    ff, cdf = _write_ff(root, rgb), _write_celebdf(root, rgb)
    gone = rgb / "Celeb-DF-v2/Celeb-synthesis/frames/id1_id0_0001/001.png"
    gone.unlink()  # listed in the JSON, not on disk
    dfdc = root / "dataset_json" / "DFDC.json"
    one = {"label": "DFDC_Real", "frames": ["DFDC/test/frames/a/000.png"]}
    dfdc.write_text(json.dumps({"DFDC": {"DFDC_Real": {"train": {}, "test": {"a": one}, "val": one},
                                         "DFDC_Fake": {"train": {}, "test": {}, "val": {}}}}))
    return {"root": root, "rgb": rgb, "ff": ff, "cdf": cdf, "dfdc": dfdc, "gone": str(gone)}


def test_spec_fields():
    spec = parse_spec("dfb:/j/FaceForensics++.json:train:c23:FF-real+FF-DF:/data/rgb:x")
    assert (str(spec.json), spec.split, spec.compression, spec.methods, str(spec.root)) == \
        ("/j/FaceForensics++.json", "train", "c23", ("FF-real", "FF-DF"), "/data/rgb:x")  # ROOT takes the rest
    spec = parse_spec("dfb:a.json")
    assert (spec.split, spec.compression, spec.methods, str(spec.root)) == ("", "", (), ".")
    with pytest.raises(UsageError, match=r"dfb:JSON\[:SPLIT"):
        parse_spec("dfb:/j/FaceForensics++.txt:train")


def test_mapping_labels_videos_and_frames(dfb):
    spec = f"dfb:{dfb['ff']}::c23::{dfb['rgb']}"
    train = samples_from(spec, "train")
    # 2 pairs -> 4 real videos and 2 videos per fake method, FRAMES frames each
    assert len(train) == (4 + 2 * len(FF_FAKES)) * FRAMES
    by_cls = {}
    for s in train:
        by_cls.setdefault(s.cls, set()).add((s.label, s.video))
    assert {c: {label for label, _ in v} for c, v in by_cls.items()} == {"FF-real": {0}, **{m: {1} for m in FF_FAKES}}
    assert by_cls["FF-real"] == {(0, f"FF-real/{v}") for v in ("000", "003", "001", "004")}
    assert (1, "FF-DF/000_003") in by_cls["FF-DF"] and (1, "FF-F2F/000_003") in by_cls["FF-F2F"]  # ids stay apart
    nt = [s.path for s in train if s.video == "FF-NT/000_003"]
    assert nt == [str(dfb["rgb"] / f"FaceForensics++/manipulated_sequences/NeuralTextures/c23/frames/000_003/{n:03d}.png")
                  for n in range(FRAMES)]  # Windows separators read, sorted by frame number
    val = samples_from(spec, "val")
    assert {s.video for s in val}.isdisjoint({s.video for s in train})
    subset = samples_from(f"dfb:{dfb['ff']}::c23:FF-real+FF-DF:{dfb['rgb']}", "train")
    assert {s.cls for s in subset} == {"FF-real", "FF-DF"}
    fixed = samples_from(f"dfb:{dfb['ff']}:val:c23::{dfb['rgb']}", "test")  # a named split wins
    assert sorted(s.path for s in fixed) == sorted(s.path for s in val)


def test_class_map_overrides_and_other_datasets(dfb, capsys):
    spec = f"dfb:{dfb['cdf']}::::{dfb['rgb']}"
    test = read_samples(spec, "test")
    assert {(s.cls, s.label) for s in test} == {("CelebDFv2_real", 0), ("CelebDFv2_fake", 1)}
    assert sum(not Path(s.path).is_file() for s in test) == 1  # kept for the loaders to skip and name
    err = capsys.readouterr().err
    assert "1 of 8 listed frames are missing" in err and dfb["gone"] in err
    flipped = read_samples(spec, "test", {"celebdfv2_fake": 0})
    assert {s.label for s in flipped} == {0}


@pytest.mark.parametrize("spec, split, message", [
    ("dfb:{ff}:bogus:c23::{rgb}", "test", r"FaceForensics\+\+\.json: unknown split 'bogus'; its splits are test, train, val"),
    ("dfb:{ff}::c99::{rgb}", "test", r"unknown compression level 'c99'; its compression levels are c23, c40"),
    ("dfb:{ff}::::{rgb}", "test", r"name a compression level, one of c23, c40"),
    ("dfb:{cdf}::c23::{rgb}", "test", r"Celeb-DF-v2\.json has no compression levels"),
    ("dfb:{ff}::c23:FF-real+FF-XX:{rgb}", "test",
     r"unknown method 'FF-XX'; its methods are FF-real, FF-DF, FF-F2F, FF-FS, FF-NT"),
    ("dfb:{ff}:train:c23::{rgb}", "train", r"a training source may not fix its split"),
    ("dfb:{ff}::c23::{root}/nowhere", "test", r"none of the 12 frames .* exists .* ROOT"),
    ("dfb:{dfdc}:val", "test", r"DFDC_Real/val is a single video entry"),
    ("dfb:{root}/absent.json", "test", r"DeepfakeBench JSON .*absent\.json does not exist"),
])
def test_bad_sources_get_one_line(dfb, spec, split, message):
    text = spec.format(**{k: v for k, v in dfb.items()})
    with pytest.raises(UsageError, match=message) as info:
        samples_from(text, split)
    assert "\n" not in str(info.value)


def test_unknown_label_names_the_file_and_the_choices(dfb, tmp_path):
    data = json.loads(dfb["ff"].read_text())
    data["FaceForensics++"]["FF-DF"]["test"]["c23"]["006_007"]["label"] = "FF-XY"
    bad = tmp_path / "FaceForensics++.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=r"FaceForensics\+\+\.json: label 'FF-XY' .* labels \(FF-real, FF-DF, .*--class_map FF-XY=real"):
        samples_from(f"dfb:{bad}::c23::{dfb['rgb']}", "test")
    labelled = samples_from(f"dfb:{bad}::c23::{dfb['rgb']}", "test", {"ff-xy": 1})
    assert {s.label for s in labelled if s.video == "FF-DF/006_007"} == {1}


def test_finetune_and_evaluate_from_deepfakebench_json(dfb, tmp_path):
    out = tmp_path / "run"
    source = f"dfb:{dfb['ff']}::c23::{dfb['rgb']}"
    argv = ["--data_path", source, "--output_dir", str(out), "--model", TINY, "--input_size", "32", "--batch_size", "8",
            "--epochs", "1", "--warmup_epochs", "0", "--blr", "0.02", "--num_workers", "0", "--device", "cpu",
            "--no_augment", "--mixup", "0", "--cutmix", "0", "--test", f"ff={source}"]
    assert finetune.main(argv) == 0
    best = safe_load(out / "checkpoint-best.pth")
    assert best["detector"]["train_classes"] == sorted(["FF-real", *FF_FAKES])
    assert evaluate.main(["--checkpoint", str(out / "checkpoint-best.pth"), "--test", f"cdf=dfb:{dfb['cdf']}::::{dfb['rgb']}",
                          "--output_dir", str(tmp_path / "eval"), "--num_workers", "0", "--device", "cpu"]) == 0
    cdf = json.loads((tmp_path / "eval" / "metrics.json").read_text())["cdf"]
    assert (cdf["n_images"], cdf["n_videos"], cdf["n_skipped"], cdf["n_real"], cdf["n_fake"]) == (7, 4, 1, 4, 3)
    assert 0.0 <= cdf["frame"]["auc"] <= 1.0 and 0.0 <= cdf["video"]["auc"] <= 1.0
    skipped = (tmp_path / "eval" / "skipped.tsv").read_text()
    assert dfb["gone"] in skipped
    with (tmp_path / "eval" / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["video"], r["label"]) for r in rows} == {("CelebDFv2_real/id0_0000", "0"), ("CelebDFv2_real/id1_0001", "0"),
                                                        ("CelebDFv2_fake/id0_id1_0000", "1"),
                                                        ("CelebDFv2_fake/id1_id0_0001", "1")}
    ff = json.loads((out / "eval" / "metrics.json").read_text())["ff"]
    assert ff["n_images"] == (2 + len(FF_FAKES)) * FRAMES and all(c["seen_in_training"] for c in ff["by_class"].values())
