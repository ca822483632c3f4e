"""Does FSFM pretraining help a detector generalise? The paper's central claim, in miniature.

Runs the default fine-tuning demo (``python -m fsfm_fast.finetune``: train on synthetic face swaps and
reenactments, test on those and on unseen upsampling artefacts and whole-face re-renders) twice per
seed: starting from the default pretraining run's checkpoint, and from scratch. Both runs see the same
data, seed, recipe and input normalisation (the pretraining set's mean/std); only the initial encoder
differs. Reported: frame- and video-level AUC per forgery type on the test people, as mean +- std over
the seeds, and the difference.

    python -m fsfm_fast.pretrain                     # once: writes output_demo/checkpoint-*.pth
    python benchmarks/bench_transfer.py --seeds 0,1,2 --json transfer.json
    python benchmarks/bench_transfer.py -- --epochs 4    # flags after -- go to fsfm_fast.finetune
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsfm_fast import demo  # noqa: E402
from fsfm_fast.engine.checkpoint import CheckpointManager  # noqa: E402
from fsfm_fast.finetune import deepfake as finetune  # noqa: E402
from fsfm_fast.formats import MEAN_STD_FILE  # noqa: E402

STARTS = ("pretrained", "scratch")
ROWS = (("fake_face_swap", "face swap (seen)"), ("fake_reenactment", "reenactment (seen)"),
        ("fake_upsampling", "upsampling (unseen)"), ("fake_rerender", "re-render (unseen)"),
        ("unseen", "all unseen types"), ("all", "all types"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pretrained", default=None,
                   help=f"pretraining checkpoint (default: the newest {demo.PRETRAIN_DIR}/checkpoint-*.pth)")
    p.add_argument("--seeds", default="0", help="comma-separated; each seed is new data and new initial heads")
    p.add_argument("--output_dir", default="output_bench_transfer")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("finetune_flags", nargs="*", help="after --: more flags for fsfm_fast.finetune")
    return p.parse_args(argv)


def aucs(metrics: dict) -> dict[str, tuple[float, float]]:
    """(frame AUC, video AUC) per row key, from the test set's metrics.json entry."""
    entry = metrics["synthetic"]
    out = {"all": (entry["frame"]["auc"], entry["video"]["auc"])}
    for cls, e in entry.get("by_class", {}).items():
        out[cls] = (e["frame"]["auc"], e["video"]["auc"])
    for group, e in entry.get("groups", {}).items():
        out[group] = (e["frame"]["auc"], e["video"]["auc"])
    return out


def _stat(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def format_table(results: dict) -> str:
    lines = ["| test fakes | frame AUC, pretrained | frame AUC, scratch | difference | video AUC, pretrained | "
             "video AUC, scratch | difference |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    seeds = sorted(results)
    for key, label in ROWS:
        cells = []
        for level in (0, 1):
            per_start = {s: [results[seed][s][key][level] for seed in seeds] for s in STARTS}
            diff = [p - q for p, q in zip(per_start["pretrained"], per_start["scratch"])]
            cells += [_stat(per_start["pretrained"]), _stat(per_start["scratch"]), f"{statistics.mean(diff):+.3f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    pretrained = args.pretrained or CheckpointManager(demo.PRETRAIN_DIR).latest()
    if pretrained is None:
        sys.exit(f"no pretraining checkpoint in {demo.PRETRAIN_DIR}/: run python -m fsfm_fast.pretrain first")
    pretrained = Path(pretrained)
    mean_std = pretrained.parent / MEAN_STD_FILE
    if not mean_std.is_file():
        sys.exit(f"no {MEAN_STD_FILE} beside {pretrained}")
    out = Path(args.output_dir)
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        results[seed] = {}
        for start in STARTS:
            run_dir = out / f"{start}_seed{seed}"
            data = run_dir / demo.FORGERY_DATA
            first = out / f"{STARTS[0]}_seed{seed}" / demo.FORGERY_DATA
            if start != STARTS[0] and not data.exists():  # the same benchmark, written once per seed
                run_dir.mkdir(parents=True, exist_ok=True)
                data.symlink_to(first.resolve(), target_is_directory=True)
            argv = ["--output_dir", str(run_dir), "--seed", str(seed), "--mean_std", str(mean_std),
                    "--finetune", str(pretrained) if start == "pretrained" else "", *args.finetune_flags]
            summary = finetune.train(finetune.parse_args(argv))
            results[seed][start] = aucs(summary["test"])
    table = format_table(results)
    print(f"\npretrained: {pretrained}; seeds {sorted(results)}\n\n{table}")
    if args.json:
        args.json.write_text(json.dumps({"pretrained": str(pretrained), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
