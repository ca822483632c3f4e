"""Face anti-spoofing and the FS-Adapter: the balanced sampler, HTER/AUC/TPR@FPR against hand-computed
values, the reference's grid threshold, honest versus oracle thresholds, the reference's FAS head against
a plain re-statement of its computation (and the pooled ablation), the heads in training mode, the
adapter (frozen encoder, what trains, what is saved, how it loads), the real-anchored contrastive loss
against a per-pair loop, seed aggregation, and short runs of both verbs end to end."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsfm_fast.finetune import deepfake as finetune, detectors, fas as finetune_fas
from fsfm_fast.formats import CheckpointError, safe_load
from fsfm_fast.runtime.cli import UsageError
from fsfm_fast.data.forgery import write_forgery_benchmark
from fsfm_fast.data.sampler import BalancedBatchSampler
from fsfm_fast.data.spoof import write_spoof_benchmark
from fsfm_fast.metrics import eer_threshold, fas_metrics, grid_eer_threshold, grid_thresholds, hter, tpr_at_fpr
from fsfm_fast.formats import ADAPTER_FORMAT
from fsfm_fast.models import create_detector, load_detector, real_anchored_contrastive
from fsfm_fast.models.adapter import freeze_encoder, load_adapter_detector, trained_state
from fsfm_fast.models.heads import FASHead, FSAdapterHead, InPlaceNormalizedLinear, NormalizedLinear

TINY = "fsfm_vit_tiny_patch16"


# ----------------------------------------------------------------------------------------------
# the balanced sampler


def test_balanced_batches_hold_each_group_and_every_sample_once_per_pass():
    groups = [list(range(0, 5)), list(range(5, 12)), list(range(12, 15))]  # 5, 7 and 3 samples
    k, world = 2, 2
    drawn = [[] for _ in groups]  # each group's draws, in stream order, over both ranks
    samplers = [BalancedBatchSampler(groups, k, iters_per_epoch=4, num_replicas=world, rank=r, seed=3)
                for r in range(world)]
    for epoch in range(6):
        for s in samplers:
            s.set_epoch(epoch)
        for batches in zip(*samplers):  # iteration t: rank 0's batch, then rank 1's
            for rank, batch in enumerate(batches):
                assert len(batch) == k * len(groups)
                t = {it for _, it in batch}
                assert len(t) == 1  # the key carries the iteration
                for g, members in enumerate(groups):
                    chunk = [i for i, _ in batch[g * k:(g + 1) * k]]
                    assert set(chunk) <= set(members)
                    drawn[g] += chunk
    for g, members in enumerate(groups):
        n = len(members)
        passes = [drawn[g][p * n:(p + 1) * n] for p in range(len(drawn[g]) // n)]
        assert len(passes) >= 3
        assert all(sorted(p) == members for p in passes), f"group {g}: a sample repeated within a pass"
        assert len({tuple(p) for p in passes}) > 1, "every pass in the same order"
    # exact resume: placed mid-epoch, the sampler yields what it would have yielded from there
    whole = list(samplers[1].__class__(groups, k, 4, world, 1, seed=3).batch(t) for t in range(8, 12))
    resumed = BalancedBatchSampler(groups, k, 4, world, 1, seed=3)
    resumed.set_epoch(2, start_index=1 * k * len(groups))
    assert list(resumed) == whole[1:]


# ----------------------------------------------------------------------------------------------
# metrics


def test_hter_auc_and_tpr_at_fpr_against_hand_computed_values():
    # attacks (1): 0.9, 0.8, 0.4, 0.35; reals (0): 0.7, 0.3, 0.2, 0.1, 0.05
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.4, 0.35, 0.7, 0.3, 0.2, 0.1, 0.05]
    rate, far, frr = hter(labels, scores, 0.5)  # attack when >= 0.5: attacks 0.4, 0.35 pass; real 0.7 rejected
    assert (far, frr, rate) == pytest.approx((2 / 4, 1 / 5, (2 / 4 + 1 / 5) / 2))
    assert hter(labels, scores, 0.35)[1:] == pytest.approx((0.0, 1 / 5))  # ">=": 0.35 itself is an attack
    # |FAR - FRR| at each score: 0.9: |3/4 - 0|, 0.8: |2/4 - 0|, 0.7: |2/4 - 1/5|, 0.4: |1/4 - 1/5|,
    # 0.35: |0 - 1/5|, ...: the closest is 0.4
    assert eer_threshold(labels, scores) == pytest.approx(0.4)
    m = fas_metrics(labels, scores)
    assert m["threshold"] == pytest.approx(0.4) and m["hter"] == pytest.approx((1 / 4 + 1 / 5) / 2)
    assert (m["far"], m["frr"]) == pytest.approx((1 / 4, 1 / 5))
    # reals 0.1, 0.2, 0.3, attacks 0.15, 0.4: |FAR - FRR| is 1/6 at both 0.3 and 0.2; the lower wins
    assert eer_threshold([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.15, 0.4]) == pytest.approx(0.2)
    assert m["auc"] == pytest.approx(18 / 20)  # 2 of the 20 (attack, real) pairs are misordered
    # live as the positive class: with no attack accepted, reals accepted above the highest attack's
    # live score 1 - 0.35: 0.3, 0.2, 0.1, 0.05 -> 4 of 5; one attack (1/4 > 1%) would be too many
    assert m["tpr_at_fpr_1pct"] == pytest.approx(4 / 5)
    # ROC (fpr, tpr): (0, 0) (0, 1/2) (1/2, 1/2) (1/2, 1) (1, 1)
    assert tpr_at_fpr([1, 1, 0, 0], [0.9, 0.2, 0.5, 0.1], max_fpr=0.25) == pytest.approx(0.5)
    assert tpr_at_fpr([1, 1, 0, 0], [0.9, 0.2, 0.5, 0.1], max_fpr=0.5) == pytest.approx(1.0)
    assert tpr_at_fpr([1, 1, 0, 0], [0.9, 0.6, 0.5, 0.1], max_fpr=0.0) == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="only real"):
        assert math.isnan(fas_metrics([0, 0], [0.1, 0.2])["hter"])


def test_honest_threshold_comes_from_source_data_and_oracle_from_the_target():
    """A target whose scores are shifted: the source threshold misses it, the target's own fits it."""
    held_out = (np.array(["a", "b", "c", "d"]), np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4]))
    vids = np.array(["t0", "t0", "t1", "t1", "t2", "t2", "t3", "t3"])
    target = (vids, np.array([0, 0, 0, 0, 1, 1, 1, 1]), np.array([0.5, 0.52, 0.55, 0.57, 0.7, 0.72, 0.8, 0.82]))
    honest = finetune_fas.honest_metrics(held_out, target)
    oracle = finetune_fas.oracle_metrics(target)
    assert honest["held_out"]["video"]["threshold"] == pytest.approx(0.3)
    assert honest["video"]["threshold"] == pytest.approx(0.3) and honest["frame"]["threshold"] == pytest.approx(0.3)
    assert honest["video"]["frr"] == 1.0 and honest["video"]["far"] == 0.0 and honest["video"]["hter"] == 0.5
    # the oracle's threshold is on the reference's grid: the lowest grid point above the highest real
    # (video 0.56 = mean(0.55, 0.57) -> 0.5601; frame 0.57 -> 5700 x 1e-4, which is 0.5700000000000001 > 0.57)
    assert oracle["video"]["threshold"] == pytest.approx(0.5601) and oracle["video"]["hter"] == 0.0
    assert oracle["frame"]["threshold"] == 5700 * (1.0 / 10000) and oracle["frame"]["hter"] == 0.0
    assert oracle["uses_target_labels"] and "grid" in oracle["threshold_rule"]
    assert "exact" in honest["threshold_rule"]
    assert honest["video"]["auc"] == oracle["video"]["auc"] == 1.0  # AUC needs no threshold


def test_grid_threshold_is_the_reference_s_and_cannot_split_between_grid_points():
    grid = grid_thresholds()
    assert grid.size == 10002 and grid[0] == 0.0 and grid[-2] == 1.0 and grid[-1] == 1.1
    assert grid[1234] == 1234 * (1.0 / 10000)  # computed as the reference does, not 1234 / 10000
    # reals 0.2 and 0.50001, attacks 0.50002 and 0.8: the observed scores split them perfectly, but no
    # grid point lies between 0.50001 and 0.50002 (both in (0.5, 0.5001)), so the grid's best leaves one
    # of four mistakes on each side: |FRR - FAR| = 1/2 everywhere from 0.2001 to 0.8, the lowest kept
    labels, scores = [0, 0, 1, 1], [0.2, 0.50001, 0.50002, 0.8]
    assert eer_threshold(labels, scores) == pytest.approx(0.50002)
    assert fas_metrics(labels, scores)["hter"] == 0.0
    assert grid_eer_threshold(labels, scores) == pytest.approx(0.2001)
    grid = fas_metrics(labels, scores, rule="grid")
    assert grid["threshold"] == pytest.approx(0.2001) and grid["hter"] == pytest.approx(0.25)
    # a score exactly on a grid point is an attack there (>=), as every decision in the package
    assert grid_eer_threshold([0, 1], [0.3, 0.5]) == pytest.approx(0.3001)
    assert hter([0, 1], [0.3, 0.5], 0.5)[0] == 0.0
    with pytest.raises(ValueError, match="rule"):
        fas_metrics(labels, scores, rule="median")


def test_seed_aggregation_mean_and_population_std(tmp_path):
    per_seed = {}
    for seed, h in enumerate([0.10, 0.20, 0.30, 0.40, 0.50]):
        entry = {level: {"hter": h, "auc": 1 - h, "tpr_at_fpr_1pct": h / 2} for level in ("frame", "video")}
        per_seed[seed] = {"honest": entry, "oracle": {lv: {k: v / 2 for k, v in e.items()} for lv, e in entry.items()}}
    summary = finetune_fas.aggregate(per_seed)
    assert summary["honest"]["mean"]["video"]["hter"] == pytest.approx(0.3)
    assert summary["honest"]["std"]["video"]["hter"] == pytest.approx(math.sqrt(0.02))  # ddof 0, as the reference
    assert summary["oracle"]["mean"]["frame"]["auc"] == pytest.approx(0.35)
    assert "TARGET LABELS" in summary["oracle"]["label"] and len(summary["honest"]["seeds"]) == 5
    finetune_fas.write_seed_table(tmp_path / "seeds.csv", summary)
    rows = list(csv.DictReader((tmp_path / "seeds.csv").open()))
    video = [r for r in rows if r["evaluation"] == "honest" and r["level"] == "video"]
    assert [r["run"] for r in video] == ["0", "1", "2", "3", "4", "mean", "std"]
    assert float(video[5]["hter_%"]) == pytest.approx(30.0)
    assert float(video[6]["hter_%"]) == pytest.approx(14.1421, 1e-4)


# ----------------------------------------------------------------------------------------------
# heads, adapter, contrastive loss


def test_pooled_fas_head_scales_its_feature_and_normalises_its_weights():
    """The ``fas_pooled`` ablation: the head's modules on one pooled feature, normalised over its channels."""
    torch.manual_seed(0)
    head = FASHead(24, 2, pooled=True).eval()
    assert isinstance(head.classifier, NormalizedLinear) and not head.reads_tokens
    x = torch.randn(5, 24)
    f = F.relu(head.bottleneck(x))
    scaled = f / torch.sqrt(2 * f.norm(dim=1, keepdim=True))
    assert torch.allclose(head.features(x), scaled, atol=1e-6)
    w = head.classifier.weight
    expected = scaled @ (w / w.norm(dim=0, keepdim=True)).T + head.classifier.bias
    assert torch.allclose(head(x), expected, atol=1e-6)
    with torch.no_grad():  # each input feature's weights have unit norm across the classes: scale is free
        head.classifier.weight.mul_(torch.rand(1, 512) * 10 + 0.1)
    assert torch.allclose(head(x), expected, atol=1e-5)
    layer = NormalizedLinear(3, 2)
    layer(torch.randn(4, 3)).sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    head.train()
    assert not torch.equal(head(x), head(x)), "dropout 0.5 should act in training"
    assert head.bottleneck.in_features == 24, "the head reads the encoder's width"


def _reference_fas_logits(model, x: torch.Tensor) -> torch.Tensor:
    """The reference's FAS model (cross_domain_FAS/models_vit.py and fas.py), restated plainly on the
    detector's own modules, in eval mode: all tokens, slot 0 replaced by fc_norm of the mean patch token;
    the embedder on every token; norm over dim 1 (the tokens); classifier with column-normalised weights on
    every token, slot 0 read."""
    tokens = model.forward_features(x)  # timm's blocks; under avg pooling no final norm, as the reference
    out = torch.zeros_like(tokens)
    out[:, 0, :] = model.fc_norm(tokens[:, 1:, :].mean(dim=1))
    out[:, 1:, :] = tokens[:, 1:, :]
    h = model.head
    feature = F.relu(F.linear(out, h.bottleneck.weight, h.bottleneck.bias))
    feature = feature / (torch.norm(feature, p=2, dim=1, keepdim=True).clamp(min=1e-12) ** 0.5 * 2 ** 0.5)
    w = h.classifier.weight
    w = w / torch.norm(w, 2, 0, True)
    return F.linear(feature, w, h.classifier.bias)[:, 0]


def test_fas_head_computes_the_reference_s_model_and_the_pooled_one_does_not():
    torch.manual_seed(3)
    token_wise = create_detector(TINY, img_size=32, head="fas", drop_path_rate=0.0).eval()
    pooled = create_detector(TINY, img_size=32, head="fas_pooled", drop_path_rate=0.0).eval()
    with torch.no_grad():  # a trained-looking fc_norm and classifier, so every part matters
        token_wise.fc_norm.weight.normal_(1.0, 0.3)
        token_wise.fc_norm.bias.normal_(0.0, 0.3)
        token_wise.head.classifier.weight.normal_(0.0, 1.0)
        token_wise.head.classifier.bias.normal_(0.0, 0.1)
    pooled.load_state_dict(token_wise.state_dict())  # the same keys: one set of weights for both
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = _reference_fas_logits(token_wise, x)
        got, other = token_wise(x), pooled(x)
    scale = expected.abs().max()
    assert float((got - expected).abs().max() / scale) < 1e-5
    assert float((other - expected).abs().max() / scale) > 1e-2, "the pooled ablation computes something else"
    assert torch.equal(token_wise.forward_head(token_wise.forward_features(x), pre_logits=True),
                       token_wise.fc_norm(token_wise.forward_features(x)[:, 1:].mean(1)))


def test_fas_heads_in_training_mode():
    torch.manual_seed(5)
    head = FASHead(24, 2).train()
    assert isinstance(head.classifier, InPlaceNormalizedLinear) and head.reads_tokens
    tokens = torch.randn(3, 7, 24)
    # the dropout sits after the ReLU on every token, before the scaling across tokens
    torch.manual_seed(11)
    got = head.features(tokens)
    torch.manual_seed(11)
    f = F.dropout(F.relu(head.bottleneck(tokens)), 0.5, training=True)
    assert torch.allclose(got, (f / (f.norm(dim=1, keepdim=True).clamp(min=1e-12).sqrt() * 2 ** 0.5))[:, 0], atol=1e-6)
    # the classifier's stored weight becomes its column-normalised copy at a training forward, and the
    # gradient is a plain Linear's at that weight (none flows through the normalisation)
    with torch.no_grad():
        head.classifier.weight.mul_(3.0)
    feature = torch.randn(5, 512)
    before = head.classifier.weight.detach().clone()
    out = head.classifier(feature)
    unit = before / before.norm(dim=0, keepdim=True)
    assert torch.allclose(head.classifier.weight, unit, atol=1e-6)
    assert torch.allclose(head.classifier.weight.norm(dim=0), torch.ones(512), atol=1e-5)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    assert torch.allclose(head.classifier.weight.grad, upstream.T @ feature, atol=1e-5)
    # in eval mode the same outputs, and the parameters are left alone
    head.eval()
    with torch.no_grad():
        head.classifier.weight.mul_(2.0)
        stored = head.classifier.weight.clone()
        assert torch.allclose(head.classifier(feature), feature @ unit.T + head.classifier.bias, atol=1e-5)
    assert torch.equal(head.classifier.weight, stored)
    # the FS-Adapter: its ReLU output is non-negative, its projection rows unit-norm in training
    adapter_head = FSAdapterHead(24, 2, head="fas").train()
    x = torch.randn(6, 24)
    adapted, bottleneck = adapter_head.adapter(x)
    assert adapted.shape == (6, 24) and (adapted >= 0).all() and (bottleneck >= 0).all()
    assert (adapted == 0).any(), "a ReLU on random inputs zeroes some outputs"
    logits, projection = adapter_head(x)
    assert logits.shape == (6, 2) and torch.allclose(projection.norm(dim=1), torch.ones(6), atol=1e-6)
    assert not getattr(adapter_head, "reads_tokens", False), "the FS-Adapter pools first"


def _direct_contrastive(z: torch.Tensor, labels: list[int], t: float) -> float:
    """The reference's real-anchored loss pair by pair, in float64 Python loops: each anchor's row shifted
    by its maximum (itself included), 1e-6 added to the denominator; no real sample: 1e-6."""
    z = z.double()
    n, total = len(labels), 0.0
    if 0 not in labels:
        return 1e-6
    for i in range(n):
        positives = [j for j in range(n) if j != i and labels[i] == 0 and labels[j] == 0]
        if not positives:
            continue
        row = [float(z[i] @ z[a]) / t for a in range(n)]
        m = max(row)
        denom = sum(math.exp(row[a] - m) for a in range(n) if a != i) + 1e-6
        total += -sum(row[p] - m - math.log(denom) for p in positives) / len(positives)
    return total / n * (t / 0.07)


def test_real_anchored_contrastive_loss_matches_a_per_pair_loop():
    torch.manual_seed(1)
    for labels, t in (([0, 0, 1, 1, 0, 1], 0.07), ([0, 1, 1, 1], 0.07), ([1, 1, 1], 0.07), ([0, 0, 1, 0], 0.2),
                      ([0, 0, 0], 0.07)):
        z = F.normalize(torch.randn(len(labels), 8), dim=1).requires_grad_(True)
        loss = real_anchored_contrastive(z, torch.tensor(labels), temperature=t)
        assert loss.item() == pytest.approx(_direct_contrastive(z.detach(), labels, t), rel=1e-5, abs=1e-9), labels
        loss.backward()
        assert torch.isfinite(z.grad).all()
        if labels.count(0) < 2:  # no real pair: nothing to pull together, zero gradients
            assert loss.item() == pytest.approx(0.0 if 0 in labels else 1e-6, abs=1e-12) and not z.grad.any()
    # the 1e-6 is inside the log: features where the denominator is tiny show it (the exact form differs)
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    loss = real_anchored_contrastive(z, torch.tensor([0, 0, 1]), temperature=0.07)
    exact = -(1 / 0.07 - torch.logsumexp(torch.tensor([1 / 0.07, -1 / 0.07]), 0)) * 2 / 3
    # float32 resolves log(1 + 1e-6) to ~5%; the exact form would give ~3e-13
    assert loss.item() == pytest.approx(_direct_contrastive(z, [0, 0, 1], 0.07), rel=0.1)
    assert loss.item() > 5e-7 and exact.item() < 1e-11
    # reals are pulled together and pushed from attacks: both get gradients
    z = F.normalize(torch.randn(5, 8), dim=1).requires_grad_(True)
    real_anchored_contrastive(z, torch.tensor([0, 0, 1, 1, 1])).backward()
    assert z.grad[2:].abs().sum() > 0 and z.grad[:2].abs().sum() > 0


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A 'pretrained' tiny encoder as a timm-style state_dict, with its mean/std beside it."""
    folder = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(7)
    state = {k: v for k, v in create_detector(TINY, img_size=32).state_dict().items()
             if not k.startswith(("head.", "fc_norm."))}
    torch.save(state, folder / "encoder.pth")
    (folder / "pretrain_ds_mean_std.txt").write_text(json.dumps({"mean": [0.5] * 3, "std": [0.25] * 3}) + "\n")
    return folder / "encoder.pth"


def test_adapter_trains_only_its_parts_and_saves_only_them(encoder_file, tmp_path):
    from fsfm_fast.models.detector import DetectorConfig, load_pretrained_encoder
    config = DetectorConfig(TINY, img_size=32, adapter="fs", head="fas")
    model = config.build()
    encoder = load_pretrained_encoder(model, encoder_file)
    trainable = freeze_encoder(model)
    d = 192
    assert trainable == (d * d // 4 * 2) + (d // 4 * d // 4 + d // 4) + (2 * d * 512 + 512) + (512 * 2 + 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = detectors.DetectionLoss.from_args(finetune.parse_args(["--data_path", "x", "--adapter", "fs", "--mixup", "0",
                                                                 "--cutmix", "0"]))
    batch = {"images": torch.randn(6, 3, 32, 32), "labels": torch.tensor([0, 0, 0, 1, 1, 1])}
    loss(model, batch).backward()
    for name, p in model.named_parameters():
        assert (p.grad is None) == (not name.startswith("head.")), name
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("head.adapter.", "head.projector.", "head.classifier.")) for k in changed)
    assert {k.split(".")[1] for k in changed} == {"adapter", "projector", "classifier"}

    record, _ = detectors.detector_checkpointing(model, config, encoder)
    torch.save(record(), tmp_path / "adapter.pth")
    saved = safe_load(tmp_path / "adapter.pth")
    assert saved["format"] == ADAPTER_FORMAT and set(saved["model"]) == set(trained_state(model))
    assert all(k.startswith("head.") for k in saved["model"])
    assert saved["encoder"]["path"] == str(encoder_file.resolve()) and len(saved["encoder"]["sha256"]) == 64
    rebuilt, config2, _ = load_detector(tmp_path / "adapter.pth")
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    assert config2.adapter == "fs" and torch.equal(rebuilt.eval()(x), model(x))
    moved = tmp_path / "elsewhere.pth"
    moved.write_bytes(encoder_file.read_bytes())
    assert torch.equal(load_adapter_detector(tmp_path / "adapter.pth", encoder=moved)[0].eval()(x), model(x))
    torch.save({k: v + 1 for k, v in torch.load(encoder_file).items()}, moved)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_detector(tmp_path / "adapter.pth", encoder=moved)


# ----------------------------------------------------------------------------------------------
# the verbs, end to end


@pytest.fixture(scope="module")
def spoof_bench(tmp_path_factory):
    return write_spoof_benchmark(tmp_path_factory.mktemp("spoof"), size=32, frames_per_video=2,
                                 identities={"train": 3, "test": 2})


def _fas_argv(bench, out, *extra):
    domains = {d: bench / d for d in ("webcam", "phone", "cctv", "laptop")}
    return ["--source", f"webcam={domains['webcam']}", "--source", f"phone={domains['phone']}",
            "--target", f"laptop={domains['laptop']}", "--model", TINY, "--input_size", "32",
            "--batch_per_group", "2", "--iterations", "4", "--eval_every", "2", "--val_fraction", "0.34",
            "--seeds", "0,1", "--num_workers", "0", "--device", "cpu", "--lr", "1e-3", "--output_dir", str(out),
            "--eval_batch_size", "64", *extra]


def test_fas_run_reports_both_evaluations_for_every_seed(spoof_bench, encoder_file, tmp_path):
    out = tmp_path / "fas"
    assert finetune_fas.main(_fas_argv(spoof_bench, out, "--finetune", str(encoder_file))) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["honest"]["seeds"]) == set(metrics["oracle"]["seeds"]) == {"0", "1"}
    for evaluation in ("honest", "oracle"):
        for level in ("frame", "video"):
            assert set(metrics[evaluation]["mean"][level]) == {"hter", "auc", "tpr_at_fpr_1pct"}
    assert "TARGET LABELS" in metrics["oracle"]["label"] and "source" in metrics["honest"]["label"]
    held = metrics["protocol"]["held_out_source"]["per_source"]
    assert set(held) == {"webcam", "phone"} and held["webcam"]["val_real_videos"] == 1
    val_lines = (out / "val_split.txt").read_text().splitlines()[1:]
    assert len(val_lines) == 2 * (1 + 2) * 2  # 2 sources x (1 real + 2 attack videos held out) x 2 frames
    for seed in (0, 1):
        best = safe_load(out / f"seed_{seed}" / "checkpoint-best.pth")
        oracle = safe_load(out / f"seed_{seed}" / "checkpoint-best-target_laptop.pth")
        assert best["selection"]["split"] == "val" and not best["selection"]["target_domain"]
        assert oracle["selection"]["split"] == "target:laptop" and oracle["selection"]["target_domain"]
        assert best["detector"]["head"] == "fas"
        seed_metrics = metrics["honest"]["seeds"][str(seed)]
        assert seed_metrics["video"]["threshold"] == pytest.approx(seed_metrics["held_out"]["video"]["threshold"])
        # the honest frame threshold is the checkpoint's decision threshold; the oracle's never is
        assert best["detector"]["threshold"] == pytest.approx(seed_metrics["held_out"]["frame"]["threshold"])
        assert best["detector"]["threshold_source"].startswith("source-selected")
        assert best["detector"]["positive_class"] == "attack" and best["detector"]["score"] == "P(attack)"
        assert oracle["detector"]["threshold"] is None and oracle["selection"]["metric"] == "hter_grid"
        assert load_detector(out / f"seed_{seed}" / "checkpoint-best.pth")[1].threshold == best["detector"]["threshold"]
    assert "grid" in metrics["protocol"]["threshold_rules"]["oracle"]
    assert "exact" in metrics["protocol"]["threshold_rules"]["honest"]
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert {(r["evaluation"], r["split"]) for r in rows} == {("honest", "val"), ("honest", "target"),
                                                             ("oracle", "target")}
    assert sum(r["split"] == "target" and r["seed"] == "0" for r in rows) == 2 * 2 * 3 * 2  # 2 ids x 3 kinds x 2 fr
    assert "USES TARGET LABELS" in (out / "table.md").read_text() and "grid" in (out / "table.md").read_text()

    # the FS-Adapter: a second run resumes nothing, trains only its parts, and its checkpoints load
    adapted = tmp_path / "fas_adapter"
    assert finetune_fas.main(_fas_argv(spoof_bench, adapted, "--finetune", str(encoder_file), "--adapter", "fs",
                                       "--seeds", "0", "--head", "linear")) == 0
    best = safe_load(adapted / "seed_0" / "checkpoint-best.pth")
    assert best["format"] == ADAPTER_FORMAT and all(k.startswith("head.") for k in best["model"])
    assert best["args"]["lr"] == 1e-3 and best["args"]["seed"] == 0
    model, config, _ = load_detector(adapted / "seed_0" / "checkpoint-best.pth")
    assert config.adapter == "fs" and config.head == "linear"


def test_fas_flags_and_data_are_checked_before_training(spoof_bench, tmp_path):
    with pytest.raises(UsageError, match="--target laptop is also a --source"):
        finetune_fas.parse_args(["--source", "laptop=x", "--target", "laptop=y"])
    with pytest.raises(UsageError, match="give --source"):
        finetune_fas.parse_args(["--source", "a=x"])
    with pytest.raises(SystemExit):  # argparse refuses it (the type of --seeds), naming the flag
        finetune_fas.parse_args(["--seeds", "0,0"])
    assert finetune_fas.parse_args(["--adapter", "fs"]).lr == 5e-2  # the authors' adapter recipe
    assert finetune_fas.parse_args(["--adapter", "fs", "--lr", "1e-3"]).lr == 1e-3
    small = tmp_path / "small"  # one live video: no video of it can be held out
    for folder, n in (("real", 2), ("spoof_print", 4)):
        (small / "train" / folder).mkdir(parents=True)
        for f in sorted((spoof_bench / "cctv" / "train" / folder).iterdir())[:n]:
            (small / "train" / folder / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UsageError, match="--source small: its real training frames come from 1 video"):
        finetune_fas.main(_fas_argv(spoof_bench, tmp_path / "o", "--source", f"small={small}"))
    with pytest.raises(UsageError, match="missing does not exist"):
        finetune_fas.main(_fas_argv(spoof_bench, tmp_path / "o", "--source", f"cctv={tmp_path / 'missing'}"))
    with pytest.raises(UsageError, match="--adapter fs trains on a frozen pretrained encoder"):
        finetune_fas.main(_fas_argv(spoof_bench, tmp_path / "o", "--adapter", "fs"))


def test_deepfake_finetune_with_the_adapter(encoder_file, tmp_path):
    bench = write_forgery_benchmark(tmp_path / "bench", seed=1, size=32, frames_per_video=1,
                                    identities={"train": 4, "val": 2, "test": 2}, workers=1)
    out = tmp_path / "run"
    argv = ["--data_path", str(bench), "--output_dir", str(out), "--model", TINY, "--input_size", "32",
            "--batch_size", "8", "--epochs", "2", "--num_workers", "0", "--device", "cpu", "--adapter", "fs",
            "--finetune", str(encoder_file), "--aa", "none", "--test", f"syn={bench}"]
    args = finetune.parse_args(argv)
    assert args.blr == 5e-3 and args.weight_decay == 0.0 and args.weight_cl == 0.01
    assert finetune.main(argv) == 0
    best = safe_load(out / "checkpoint-best.pth")
    assert best["format"] == ADAPTER_FORMAT and all(k.startswith("head.") for k in best["model"])
    assert json.loads((out / "eval" / "metrics.json").read_text())["syn"]["n_images"] == 2 * 6
