"""Frozen-feature probes: the k-NN and the linear probe on features whose answer is known, the feature
cache, the verb's synthetic default, and the pretraining health monitor (which must not change training)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from fsfm_fast.data.identities import write_identity_benchmark
from fsfm_fast.data.synthetic import write_synthetic_dataset
from fsfm_fast.engine.checkpoint import CheckpointManager
from fsfm_fast.engine.run_log import read_log
from fsfm_fast.formats import PRETRAIN_FORMAT
from fsfm_fast.models import TargetNetwork, create_online
from fsfm_fast.probe.__main__ import main as probe_main
from fsfm_fast.probe.encoders import load_encoder
from fsfm_fast.probe.features import features_of
from fsfm_fast.probe.knn import knn_predict, knn_top1
from fsfm_fast.probe.linear import LinearSettings, linear_probe
from fsfm_fast.probe.sets import read_probe_set
from fsfm_fast.pretrain.__main__ import main as pretrain_main
from fsfm_fast.runtime import cli

TINY = "fsfm_vit_tiny_patch16"
REPO = Path(__file__).resolve().parents[1]


def _clusters(rng, centres: np.ndarray, per_class: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([c + spread * rng.standard_normal((per_class, centres.shape[1])) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(len(centres)), per_class)


# ----------------------------------------------------------------------------------------------
# k-NN


def test_knn_separable_classes_are_all_found():
    rng = np.random.default_rng(0)
    centres = 5.0 * np.eye(4, 16)
    train_x, train_y = _clusters(rng, centres, 30, 0.3)
    test_x, test_y = _clusters(rng, centres, 20, 0.3)
    assert knn_top1(train_x, train_y, test_x, test_y) == 1.0


def test_knn_on_random_features_is_at_chance():
    rng = np.random.default_rng(1)
    train_x, test_x = rng.standard_normal((400, 32)), rng.standard_normal((400, 32))
    train_y, test_y = rng.integers(0, 4, 400), rng.integers(0, 4, 400)
    assert 0.15 < knn_top1(train_x, train_y, test_x, test_y) < 0.35  # chance is 0.25


def test_knn_confuses_two_classes_with_identical_features():
    rng = np.random.default_rng(2)
    a = np.ones(8) + 0.1 * rng.standard_normal((20, 8))  # classes 0 and 1 both here, the very same points
    b = -np.ones(8) + 0.1 * rng.standard_normal((20, 8))  # class 2
    train_x = np.concatenate([a, a, b])
    train_y = np.repeat([0, 1, 2], 20)
    test_a = np.ones(8) + 0.1 * rng.standard_normal((20, 8))
    test_x = np.concatenate([test_a, -np.ones(8) + 0.1 * rng.standard_normal((10, 8))])
    test_y = np.array([0] * 10 + [1] * 10 + [2] * 10)
    pred = knn_predict(train_x, train_y, test_x)
    assert set(pred[:20]) <= {0, 1} and (pred[20:] == 2).all()
    # every vote between 0 and 1 is a tie, so one of them is called for all of them: half are right
    assert np.mean(pred[:20] == test_y[:20]) == 0.5


def test_knn_weights_are_dino_s():
    """Against DINO's formula written out: top-k cosine neighbours, votes exp(s / T)."""
    rng = np.random.default_rng(3)
    train_x, test_x = rng.standard_normal((60, 6)), rng.standard_normal((25, 6))
    train_y = rng.integers(0, 3, 60)
    for k, t in ((5, 0.07), (20, 0.5), (60, 1.0)):
        a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
        q = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
        sim = q @ a.T
        top = np.argsort(-sim, axis=1)[:, :k]
        votes = np.zeros((len(q), 3))
        for i, row in enumerate(top):
            np.add.at(votes[i], train_y[row], np.exp(sim[i, row] / t))
        assert (knn_predict(train_x, train_y, test_x, k, t) == votes.argmax(1)).all()


# ----------------------------------------------------------------------------------------------
# linear probe

FAST = LinearSettings(epochs=40, batch_size=64)


def test_linear_probe_separable():
    rng = np.random.default_rng(4)
    centres = np.stack([np.full(10, 1.0), np.full(10, -1.0)])
    train_x, train_y = _clusters(rng, centres, 100, 0.5)
    test_x, test_y = _clusters(rng, centres, 50, 0.5)
    out = linear_probe(train_x, train_y, test_x, test_y, 2, FAST)
    assert out["acc"] >= 0.98 and out["auc"] >= 0.99


def test_linear_probe_random_is_at_chance():
    rng = np.random.default_rng(5)
    out = linear_probe(rng.standard_normal((300, 16)), rng.integers(0, 2, 300), rng.standard_normal((400, 16)),
                       rng.integers(0, 2, 400), 2, FAST)
    assert 0.4 < out["acc"] < 0.6 and 0.4 < out["auc"] < 0.6


def test_linear_probe_confuses_two_classes_with_identical_features():
    rng = np.random.default_rng(6)
    centres = np.stack([np.full(10, 1.0), np.full(10, 1.0), np.full(10, -1.0)])  # classes 0 and 1 coincide
    train_x, train_y = _clusters(rng, centres, 100, 0.3)
    test_x, test_y = _clusters(rng, centres, 100, 0.3)
    out = linear_probe(train_x, train_y, test_x, test_y, 3, FAST)
    # class 2 always right, classes 0 and 1 right half the time: 2/3 in all, give or take the draw
    assert 0.55 < out["acc"] < 0.78
    assert "auc" not in out


def test_linear_probe_leaves_the_global_stream_alone():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((50, 4)).astype(np.float32), rng.integers(0, 2, 50)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    linear_probe(x, y, x, y, 2, LinearSettings(epochs=2))
    assert torch.equal(torch.rand(3), expected)


# ----------------------------------------------------------------------------------------------
# features and their cache


def _class_folders(root: Path, classes=("real", "fake"), per_class: int = 3, size: int = 40) -> Path:
    rng = np.random.default_rng(8)
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"v{i}_frame_0.png")
    return root


def _tiny_state_dict(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(timm.create_model(TINY, img_size=32).state_dict(), path)
    return path


def test_features_are_cached_and_a_changed_checkpoint_is_not_mistaken(tmp_path):
    data = _class_folders(tmp_path / "data")
    probe_set = read_probe_set("d", str(data), str(data))
    ckpt, cache = _tiny_state_dict(tmp_path / "enc.pth", 0), tmp_path / "cache"
    kwargs = dict(pool="avg", resize="plain", batch_size=4, num_workers=0, device=torch.device("cpu"),
                  amp_dtype=None, cache_dir=cache)
    first = features_of(load_encoder(str(ckpt)), probe_set.train, **kwargs)
    again = features_of(load_encoder(str(ckpt)), probe_set.train, **kwargs)
    assert not first.from_cache and again.from_cache
    np.testing.assert_array_equal(first.values, again.values)
    assert first.values.shape == (6, 192)
    _tiny_state_dict(ckpt, 1)  # same file name, other weights
    changed = features_of(load_encoder(str(ckpt)), probe_set.train, **kwargs)
    assert not changed.from_cache and not np.allclose(changed.values, first.values)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(probe_set.train[0].path)  # an image rewritten
    assert not features_of(load_encoder(str(ckpt)), probe_set.train, **kwargs).from_cache


def test_two_processes_give_the_features_of_one(tmp_path):
    """Each rank reads a disjoint share (5 images over 2 ranks: a ragged split) and the gathered features
    come back in sample order, as one process computes them."""
    data = _class_folders(tmp_path / "data", classes=("real", "fake", "fake_b"), per_class=2)
    (data / "test" / "fake_b" / "v0_frame_0.png").unlink()  # 5 test images
    ckpt = _tiny_state_dict(tmp_path / "enc.pth", 0)
    argv = ["--checkpoint", f"enc={ckpt}", "--data", f"d={data}", "--lin_epochs", "2", "--num_workers", "0",
            "--device", "cpu", "--batch_size", "2"]
    assert probe_main(argv + ["--output_dir", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29700 + os.getpid() % 1000), "-m", "fsfm_fast.probe", *argv, "--output_dir", str(tmp_path / "two")]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    caches = {}  # per run: the train (6 rows) and test (5 rows) feature files
    for run in ("one", "two"):
        for path in (tmp_path / run / "feature_cache").glob("*.safetensors"):
            t = load_file(str(path))
            caches.setdefault(run, {})[len(t["index"])] = t
    assert sorted(caches["one"]) == sorted(caches["two"]) == [5, 6]
    for n in (5, 6):
        assert torch.equal(caches["one"][n]["index"], caches["two"][n]["index"])
        torch.testing.assert_close(caches["one"][n]["features"], caches["two"][n]["features"], rtol=1e-5, atol=1e-5)
    one, two = (json.loads((tmp_path / run / "metrics.json").read_text())["sets"]["d"] for run in ("one", "two"))
    assert one["encoders"]["enc"]["knn_top1"] == two["encoders"]["enc"]["knn_top1"]


def test_online_and_target_encoders_of_a_pretraining_checkpoint(tmp_path):
    _demo_pretraining(tmp_path)
    path = CheckpointManager(tmp_path).latest()
    ckpt = torch.load(path, weights_only=True)
    ckpt["target"]["blocks.0.mlp.fc1.weight"] += 1.0  # the EMA has moved away from the online weights
    torch.save(ckpt, path)
    online, target = load_encoder(str(path)), load_encoder(str(path), encoder="target")
    assert online.fingerprint != target.fingerprint and online.mean == (0.5,) * 3
    torch.testing.assert_close(target.model.state_dict()["blocks.0.mlp.fc1.weight"],
                               ckpt["target"]["blocks.0.mlp.fc1.weight"])


def test_identity_folders_are_classes_in_sorted_order(tmp_path):
    data = _class_folders(tmp_path / "ids", classes=("zoe", "adam", "mia"), per_class=2)
    probe_set = read_probe_set("ids", str(data), str(data))
    assert probe_set.classes == ("adam", "mia", "zoe")
    assert [probe_set.classes[y] for y in probe_set.test_y] == [Path(s.path).parent.name for s in probe_set.test]
    binary = read_probe_set("rf", str(_class_folders(tmp_path / "rf", ("real", "fake_x"))), str(tmp_path / "rf"))
    assert binary.classes == ("real", "fake") and set(binary.test_y) == {0, 1}
    assert all(y == (s.cls != "real") for s, y in zip(binary.test, binary.test_y))


def test_bad_flags_fail_in_one_line_before_any_work(tmp_path, capsys):
    assert cli.run(probe_main, "fsfm_fast.probe", ["--data", str(tmp_path / "nowhere"),
                                                   "--output_dir", str(tmp_path / "out")]) == 2
    assert cli.run(probe_main, "fsfm_fast.probe", ["--checkpoint", "random:no_such_model",
                                                   "--output_dir", str(tmp_path / "out")]) == 2
    with pytest.raises(SystemExit) as stop:  # a flag out of its range stops at parse time, as in every verb
        cli.run(probe_main, "fsfm_fast.probe", ["--knn_k", "0"])
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 3 and all(line.startswith("fsfm_fast.probe: error: ") for line in lines)
    assert "nowhere" in lines[0] and "no_such_model" in lines[1] and "--knn_k" in lines[2]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# the verb with no data flags


def _demo_pretraining(folder: Path, size: int = 32) -> None:
    """A pretraining checkpoint where the demo keeps them, as the pretraining verb writes them."""
    torch.manual_seed(11)
    online = create_online(TINY, img_size=size)
    target = TargetNetwork.from_online(online)
    CheckpointManager(folder, keep_last=1).save(
        {"format": PRETRAIN_FORMAT, "model": online.state_dict(), "target": target.state_dict(), "iteration": 5,
         "args": {"model": TINY, "input_size": size}, "mean_std": {"mean": [0.5] * 3, "std": [0.25] * 3}}, 5)


TINY_DEMO = ["--synthetic_identities", "3", "--synthetic_frames", "2", "--synthetic_forgery_people", "2",
             "--lin_epochs", "2", "--num_workers", "0", "--device", "cpu"]


def test_probe_with_no_data_compares_the_demo_encoder_with_a_random_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _demo_pretraining(tmp_path / "output_demo")
    assert probe_main(TINY_DEMO) == 0
    out = tmp_path / "output_demo_probe"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["sets"]) == {"identities", "forgeries"}
    assert metrics["sets"]["identities"]["classes"][:1] == ["id5000000"]
    for name, entry in metrics["sets"].items():
        assert set(entry["encoders"]) == {"pretrained", "random"}
        for m in entry["encoders"].values():
            assert 0.0 <= m["knn_top1"] <= 1.0 and not m["features_cached"]
    assert metrics["sets"]["identities"]["encoders"]["random"]["n_test"] == 6
    assert "linear_auc" in metrics["sets"]["forgeries"]["encoders"]["random"]
    # the two encoders differ (other weights), so their features must too
    assert metrics["encoders"]["pretrained"]["weights_sha256"] != metrics["encoders"]["random"]["weights_sha256"]
    assert (out / "embedding.png").stat().st_size > 0 and "| identities | pretrained |" in (out / "table.md").read_text()
    assert probe_main(TINY_DEMO) == 0  # the second run reads every feature back from the cache
    again = json.loads((out / "metrics.json").read_text())
    assert all(m["features_cached"] for e in again["sets"].values() for m in e["encoders"].values())
    assert again["sets"] == {k: {**v, "encoders": {n: {**m, "features_cached": True} for n, m in v["encoders"].items()}}
                             for k, v in metrics["sets"].items()}


def test_probe_without_a_demo_run_says_so_and_probes_the_random_encoder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert probe_main(TINY_DEMO + ["--no_cache"]) == 0
    assert "no demo pretraining checkpoint" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "output_demo_probe" / "metrics.json").read_text())
    assert list(metrics["encoders"]) == ["random"] and not (tmp_path / "output_demo_probe" / "feature_cache").exists()


# ----------------------------------------------------------------------------------------------
# the health monitor of pretraining


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("faces"), 32, size=64, seed=3)


def _pretrain(faces: Path, out: Path, *extra: str) -> None:
    assert pretrain_main(["--data_path", str(faces), "--output_dir", str(out), "--model", TINY, "--input_size", "64",
                          "--batch_size", "8", "--epochs", "2", "--warmup_epochs", "1", "--blr", "1e-2",
                          "--num_workers", "0", "--log_every", "1", "--device", "cpu", "--mean_std_samples", "16",
                          "--max_steps", "6", "--save_every", "0", *extra]) == 0


def test_monitor_is_logged_and_changes_no_loss(faces, tmp_path):
    probe_data = write_identity_benchmark(tmp_path / "ids", identities=3, frames=2, size=64)
    _pretrain(faces, tmp_path / "plain")
    _pretrain(faces, tmp_path / "watched", "--probe_data", str(probe_data), "--probe_every", "1")
    plain, watched = read_log(tmp_path / "plain" / "log.jsonl"), read_log(tmp_path / "watched" / "log.jsonl")
    keys = ("loss", "loss_rec_all", "loss_rec_sfr", "loss_cl", "grad_norm")
    assert [r["step"] for r in plain] == [r["step"] for r in watched] == list(range(1, 7))
    for a, b in zip(plain, watched):  # bit for bit, also after the probe at iteration 4 (one epoch)
        assert [a.get(k) for k in keys] == [b.get(k) for k in keys], a["step"]
    probes = read_log(tmp_path / "watched" / "log.jsonl", "val")
    assert [r["step"] for r in probes] == [4, 6]  # every epoch, and at the end
    for r in probes:
        assert 0.0 <= r["probe/online_knn_top1"] <= 1.0 and 0.0 <= r["probe/target_knn_top1"] <= 1.0
        assert r["probe/seconds"] > 0
    assert not read_log(tmp_path / "plain" / "log.jsonl", "val")
    summary = json.loads((tmp_path / "watched" / "summary.json").read_text())
    assert 0 < summary["monitor_seconds"] < summary["run_seconds"]
    assert (tmp_path / "watched" / "loss_curves.png").is_file()


def test_monitor_moves_no_random_stream_and_restores_every_mode(tmp_path):
    """What the loss comparison above cannot see (that small run draws nothing from the global streams
    and has no dropout): a probe leaves every stream where it was and each submodule in its own mode."""
    import random

    from fsfm_fast.probe.monitor import HealthMonitor
    probe_set = read_probe_set("ids", *[str(write_identity_benchmark(tmp_path / "ids", 3, 2, size=64))] * 2)
    online = create_online(TINY, img_size=64)
    target = TargetNetwork.from_online(online)
    online.train()
    target.eval()  # as pretraining keeps it
    online.blocks[0].eval()  # a mixed state must come back as it was, not all-train
    before = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    monitor = HealthMonitor(probe_set, 64, [0.5] * 3, [0.25] * 3, device=torch.device("cpu"), amp_dtype=None)
    weights = {k: v.clone() for k, v in online.state_dict().items()}
    out = monitor({"online": online, "target": target})
    assert set(out) == {"online_knn_top1", "target_knn_top1", "seconds"} and monitor.calls == 1
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert (np.random.get_state()[1] == before[1]).all() and random.getstate() == before[2]
    assert online.training and not online.blocks[0].training and online.blocks[1].training and not target.training
    assert all(torch.equal(v, weights[k]) for k, v in online.state_dict().items())
