"""Detectors from pretrained encoders: which keys load, what the features are, pos-embed resampling,
detector checkpoints; and the labelled-image data (folder-name label rule, videos, split files)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fsfm_fast.formats import CheckpointError
from fsfm_fast.runtime.cli import UsageError
from fsfm_fast.data.labelled import LabelledImages, collate_labelled, read_split_file, samples_from
from fsfm_fast.data.samples import FAKE, REAL, folder_label, parse_class_map
from fsfm_fast.formats import DETECTOR_FORMAT
from fsfm_fast.models import DetectorConfig, create_detector, create_online, load_detector, load_pretrained_encoder
from fsfm_fast.formats import MEAN_STD_FILE

TINY = "fsfm_vit_tiny_patch16"
HEAD = ["head.bias", "head.weight"]
FC_NORM = ["fc_norm.bias", "fc_norm.weight"]


@pytest.fixture(scope="module")
def online():
    torch.manual_seed(0)
    net = create_online(TINY, img_size=32)
    with torch.no_grad():  # the release's pos_embed is fixed sin-cos; make every weight count in the check
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def reference_ckpt(online, tmp_path_factory):
    path = tmp_path_factory.mktemp("release") / "checkpoint-400.pth"
    torch.save({"model": online.state_dict(), "args": argparse.Namespace(model=TINY, input_size=32)}, path)
    return path


def test_reference_checkpoint_loads_and_features_equal_our_encoder(online, reference_ckpt):
    x = torch.randn(3, 3, 32, 32)
    cls = create_detector(TINY, img_size=32, global_pool="cls").eval()
    info = load_pretrained_encoder(cls, reference_ckpt)
    assert info.kind == "reference" and info.missing == HEAD and info.pretrained_model == TINY
    assert "projector.projection_head.0.weight" in info.ignored and "decoder_embed.weight" in info.ignored
    with torch.no_grad():
        torch.testing.assert_close(cls.forward_features(x), online.encode(x), rtol=1e-5, atol=1e-5)

    avg = create_detector(TINY, img_size=32, global_pool="avg").eval()
    info = load_pretrained_encoder(avg, reference_ckpt)
    assert info.missing == sorted(FC_NORM + HEAD) and "norm.weight" in info.ignored  # timm's avg pool has no norm
    seen = {}
    online.norm.register_forward_hook(lambda m, inp, out: seen.setdefault("blocks", inp[0]))
    with torch.no_grad():
        online.encode(x)
        tokens = avg.forward_features(x)
        torch.testing.assert_close(tokens, seen["blocks"], rtol=1e-5, atol=1e-5)
        pooled = avg.forward_head(tokens, pre_logits=True)  # mean over the patch tokens, cls excluded
        torch.testing.assert_close(pooled, avg.fc_norm(seen["blocks"][:, 1:].mean(1)), rtol=1e-5, atol=1e-5)
    assert avg.head.weight.abs().max() < 1e-4, "the head starts ~N(0, 2e-5)"


def test_our_pretraining_checkpoint_state_dicts_and_mean_std(online, tmp_path):
    stats = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    ours = tmp_path / "checkpoint-00000010.pth"
    torch.save({"format": "fsfm_fast.pretrain/1", "model": online.state_dict(), "target": {},
                "mean_std": {"mean": [0.1] * 3, "std": [0.9] * 3}, "args": {"model": TINY}}, ours)
    info = load_pretrained_encoder(create_detector(TINY, img_size=32), ours)
    assert info.kind == "fsfm_fast pretraining" and info.mean_std == ([0.1] * 3, [0.9] * 3)
    (tmp_path / MEAN_STD_FILE).write_text(json.dumps(stats) + "\n")  # the file beside wins (SPEC section 7)
    assert load_pretrained_encoder(create_detector(TINY, img_size=32), ours).mean_std == (stats["mean"], stats["std"])

    encoder = {k: v for k, v in online.state_dict().items() if k.startswith(("patch_embed", "cls_token", "pos_embed",
                                                                            "blocks", "norm"))}
    save_file({k: v.contiguous() for k, v in encoder.items()}, str(tmp_path / "encoder.safetensors"))
    torch.save({"module." + k: v for k, v in encoder.items()}, tmp_path / "ddp_state_dict.pth")
    for name, kind in (("encoder.safetensors", "safetensors"), ("ddp_state_dict.pth", "state_dict")):
        det = create_detector(TINY, img_size=32)
        info = load_pretrained_encoder(det, tmp_path / name)
        assert info.kind == kind and info.missing == sorted(FC_NORM + HEAD)
        torch.testing.assert_close(det.blocks[2].attn.qkv.weight, online.blocks[2].attn.qkv.weight)


def test_missing_or_misshapen_encoder_keys_are_listed(online, tmp_path):
    state = online.state_dict()
    del state["blocks.1.mlp.fc2.weight"]
    torch.save({"model": state}, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="missing encoder keys: blocks.1.mlp.fc2.weight"):
        load_pretrained_encoder(create_detector(TINY, img_size=32), tmp_path / "cut.pth")
    small = create_online("fsfm_vit_small_patch16", img_size=32)
    torch.save({"model": small.state_dict(), "args": argparse.Namespace(model="fsfm_vit_small_patch16")},
               tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match="pretrained as fsfm_vit_small_patch16.*wrong shapes: cls_token"):
        load_pretrained_encoder(create_detector(TINY, img_size=32), tmp_path / "small.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pth.*not a valid checkpoint"):
        load_pretrained_encoder(create_detector(TINY, img_size=32), tmp_path / "junk.pth")


def test_pos_embed_is_resampled_to_another_input_size(online, reference_ckpt):
    det = create_detector(TINY, img_size=64)  # a 4x4 grid from the checkpoint's 2x2
    info = load_pretrained_encoder(det, reference_ckpt)
    assert info.pos_embed_resampled_from == (2, 2) and info.missing == sorted(FC_NORM + HEAD)
    src, dst = online.pos_embed.detach(), det.pos_embed.detach()
    assert dst.shape == (1, 17, 192)
    torch.testing.assert_close(dst[:, 0], src[:, 0])  # the cls slot is kept, not interpolated
    # a grid of one constant per channel stays that constant under (normalised) bicubic resampling
    flat = torch.cat([src[:, :1], src[:, 1:2].expand(-1, 4, -1)], dim=1)
    torch.save({"model": {**online.state_dict(), "pos_embed": flat}}, reference_ckpt.with_name("flat.pth"))
    load_pretrained_encoder(det, reference_ckpt.with_name("flat.pth"))
    torch.testing.assert_close(det.pos_embed[:, 1:].detach(), src[:, 1:2].expand(-1, 16, -1), rtol=1e-5, atol=1e-5)
    same = create_detector(TINY, img_size=32)
    assert load_pretrained_encoder(same, reference_ckpt).pos_embed_resampled_from is None
    torch.testing.assert_close(same.pos_embed.detach(), src)


def test_detector_checkpoint_round_trip(tmp_path):
    config = DetectorConfig(model=TINY, img_size=32, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2),
                            train_classes=("real", "fake_x"))
    model = config.build()
    path = tmp_path / "det.pth"
    torch.save({"format": DETECTOR_FORMAT, "detector": config.to_dict(), "model": model.state_dict()}, path)
    loaded, again, _ = load_detector(path)
    assert again == config
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
    torch.save({"model": model.state_dict()}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a fsfm_fast detector checkpoint"):
        load_detector(tmp_path / "other.pth")


def test_detector_config_records_the_inference_contract_and_reads_old_records():
    deepfake = DetectorConfig(model=TINY, img_size=32)
    record = deepfake.to_dict()
    assert (record["positive_class"], record["score"], record["threshold"]) == ("fake", "P(fake)", None)
    assert deepfake.contract.positive_index == 1 and deepfake.contract.negative_class == "real"
    fas = DetectorConfig(model=TINY, img_size=32, labels=("real", "attack"), head="fas", threshold=0.25,
                         threshold_source="source-selected: held-out source data")
    assert DetectorConfig.from_dict(fas.to_dict()) == fas
    assert fas.contract.score == "P(attack)" and fas.contract.resolve_threshold() == (
        0.25, "recorded in the detector: source-selected: held-out source data")
    assert fas.contract.resolve_threshold(0.6) == (0.6, "given")
    # a record written before the contract: derived from its labels; its "fas" head was the pooled one
    old = {k: v for k, v in fas.to_dict().items() if k not in ("positive_class", "score", "threshold",
                                                                 "threshold_source")}
    legacy = DetectorConfig.from_dict(old)
    assert legacy.positive_class == "attack" and legacy.threshold is None and legacy.head == "fas_pooled"
    assert DetectorConfig.from_dict({**old, "head": "linear", "labels": ["fake", "real"]}).contract.positive_index == 0
    assert DetectorConfig.from_dict({**old, "labels": ["live", "spoof"]}).positive_class == "spoof"  # class 1
    with pytest.raises(ValueError, match="needs its source"):
        DetectorConfig(model=TINY, threshold=0.5)
    with pytest.raises(ValueError, match="not one of the labels"):
        DetectorConfig(model=TINY, positive_class="attack")
    with pytest.raises(ValueError, match="probability"):
        DetectorConfig(model=TINY, threshold=1.5, threshold_source="given")


# ----------------------------------------------------------------------------------------------
# labelled images


def test_folder_names_map_to_labels_by_rule_never_by_order():
    for name in ("real", "Real_videos", "original_sequences", "youtube", "Celeb-real", "YouTube-real", "ff_real"):
        assert folder_label(name) == REAL, name
    for name in ("fake", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "Celeb-synthesis", "fake_x"):
        assert folder_label(name) == FAKE, name
    with pytest.raises(UsageError, match="'aaa_reenacted' in /d.*--class_map aaa_reenacted=fake"):
        folder_label("aaa_reenacted", where="/d")
    mapping = parse_class_map(["aaa_reenacted=fake,pristine=real"])
    assert folder_label("AAA_reenacted", mapping) == FAKE and folder_label("pristine", mapping) == REAL
    with pytest.raises(UsageError, match="NAME=real or NAME=fake"):
        parse_class_map(["fake_four"])
    with pytest.raises(UsageError, match="label must be real, fake, 0 or 1"):
        parse_class_map(["x=maybe"])


def _png(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_videos_splits_and_unreadable_images(tmp_path):
    root = tmp_path / "ds"
    _png(root / "test" / "youtube" / "000_frame_0.png")
    _png(root / "test" / "youtube" / "000_frame_5.png")
    _png(root / "test" / "Deepfakes" / "000_003_frame_0.png")
    _png(root / "test" / "Face2Face" / "000_003_frame_0.png")  # same file name, another video
    _png(root / "test" / "fake" / "clip7" / "0001.png")  # one folder per video
    (root / "test" / "fake" / "clip7" / "0002.png").write_bytes(b"not a png")
    samples = samples_from(str(root), "test")
    videos = {s.path.split("/test/")[1]: (s.video, s.label) for s in samples}
    assert videos == {"Deepfakes/000_003_frame_0.png": ("Deepfakes/000_003", 1),
                      "Face2Face/000_003_frame_0.png": ("Face2Face/000_003", 1),
                      "fake/clip7/0001.png": ("fake/clip7", 1), "fake/clip7/0002.png": ("fake/clip7", 1),
                      "youtube/000_frame_0.png": ("youtube/000", 0), "youtube/000_frame_5.png": ("youtube/000", 0)}
    with pytest.raises(UsageError, match="has no val/ folder \\(it has test/\\)"):
        samples_from(str(root), "val")
    _png(root / "test" / "morphs" / "a.png")
    with pytest.raises(UsageError, match="class folder 'morphs'"):
        samples_from(str(root), "test")
    assert {s.cls for s in samples_from(str(root), "test", parse_class_map(["morphs=fake"]))} >= {"morphs"}

    split = tmp_path / "split.txt"
    split.write_text("# path label\nds/test/youtube/000_frame_0.png 0\nds/test/Deepfakes/000_003_frame_0.png fake\n\n")
    listed = read_split_file(split)
    assert [s.label for s in listed] == [0, 1] and listed[0].path == str(tmp_path / "ds/test/youtube/000_frame_0.png")
    split.write_text("just_a_path.png\n")
    with pytest.raises(UsageError, match="split.txt:1: expected"):
        read_split_file(split)

    data = LabelledImages(samples_from(str(root), "test", parse_class_map(["morphs=fake"])), lambda im: torch.zeros(1))
    batch = collate_labelled([data[i] for i in range(len(data))])
    assert batch["n_skipped"] == 1 and batch["skipped"][0][0].endswith("clip7/0002.png")
    assert "unreadable image" in batch["skipped"][0][1] and batch["images"].shape[0] == len(data) - 1
