"""Frozen-feature probes of encoders: ``python -m fsfm_fast.probe``.

    python -m fsfm_fast.probe --checkpoint pretrained=output_pretrain/checkpoint-00100000.pth \\
        --checkpoint random=random:fsfm_vit_base_patch16 --data /data/vggface2_probe

Each encoder (``--checkpoint [NAME=]SPEC``, repeatable; ``probe/encoders.py``: our checkpoints, online or
target, the reference release, detectors, export folders, ``timm:<name>``, ``random:<size>``) turns every
image of each set into one frozen feature (``probe/features.py``; cached on disk), then:

- a weighted k-NN classifier (cosine similarity, ``--knn_k`` 20 and ``--knn_temperature`` 0.07 as DINO's
  evaluation): top-1 accuracy on the test split;
- a linear probe (MAE's recipe: BatchNorm without affine, then a linear layer; SGD or LARS, a few epochs):
  accuracy, and AUC with two classes.

A set is ``--data ROOT`` (``ROOT/train/<class>/`` and ``ROOT/test/<class>/``) or ``--train SPEC --test SPEC``
(folders of class folders, split files: fine-tuning's readers). Classes: ``probe/sets.py``.

With no data flags it writes two synthetic sets into the output folder: ``identities`` (held-out synthetic
people, a k-NN of who is who) and ``forgeries`` (real against fake, the fine-tuning demo's generator); with no
``--checkpoint`` it compares the demo pretraining's encoder (the newest ``output_demo/checkpoint-*.pth``)
with the same network before training (``random:``, the run's seed). Outputs in ``--output_dir``:
``metrics.json``, ``table.md`` and ``embedding.png``. Any number of processes (``torchrun``): the
features are shared out and gathered like ``evaluate``'s scores.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..runtime import cli
from .args import parse_args

if __name__ == "__main__":  # -h and flag errors answer before torch is imported (the imports below)
    sys.exit(cli.run_verb("fsfm_fast.probe", parse_args, "fsfm_fast.probe.__main__"))

from ..data.forgery import write_forgery_benchmark
from ..data.identities import write_identity_benchmark
from ..data.samples import parse_class_map
from ..demo import PRETRAIN_DIR
from ..engine.checkpoint import CheckpointManager
from ..formats import MEAN_STD_FILE, read_mean_std, safe_load
from ..pretrain.args import DEMO_DEFAULTS as PRETRAIN_DEMO
from ..runtime.devices import autocast_dtype, device_type, resolve_device
from ..runtime.distributed import DistInfo, barrier, process_group
from .encoders import load_encoder
from .linear import LinearSettings
from .run import ProbeSettings, run_probes
from .sets import read_probe_set

IDENTITY_DATA, FORGERY_DATA = "synthetic_identities", "synthetic_forgeries"


def demo_checkpoints(say) -> tuple[list[str], tuple | None]:
    """The demo pretraining's newest checkpoint and the same network untrained; the random one alone
    (at the demo's size) when there is no demo run. Also the run's mean/std, for the random encoder."""
    latest = CheckpointManager(PRETRAIN_DIR).latest()
    if latest is None:
        say(f"no demo pretraining checkpoint in {PRETRAIN_DIR}/ (run python -m fsfm_fast.pretrain first): "
            "probing the random encoder only")
        return [f"random=random:{PRETRAIN_DEMO['model']}@{PRETRAIN_DEMO['input_size']}"], None
    recorded = safe_load(latest).get("args") or {}
    recorded = recorded if isinstance(recorded, dict) else vars(recorded)  # a Namespace in training checkpoints
    model, size = recorded.get("model"), recorded.get("input_size")
    stats = Path(PRETRAIN_DIR) / MEAN_STD_FILE
    mean_std = read_mean_std(stats) if stats.is_file() else None
    return [f"pretrained={latest}", f"random=random:{model}@{size}"], mean_std


def probe_sets(args, info: DistInfo):
    """The sets to probe: the user's, or the synthetic ones written into the output folder."""
    class_map = parse_class_map(args.class_map)
    if args.data or args.train:
        sets = []
        for item in args.data:
            name, sep, root = item.partition("=")
            name, root = (name, root) if sep and not Path(item).exists() else (Path(item).name, item)
            sets.append(read_probe_set(name, root, root, args.labels, class_map))
        if args.train:
            sets.append(read_probe_set("data", args.train, args.test, args.labels, class_map))
        return sets
    out = Path(args.output_dir)
    if info.is_main:
        write_identity_benchmark(out / IDENTITY_DATA, args.synthetic_identities, args.synthetic_frames, seed=args.seed)
        n = args.synthetic_forgery_people
        write_forgery_benchmark(out / FORGERY_DATA, seed=args.seed, frames_per_video=2,
                                identities={"train": n, "val": 2, "test": n})
    barrier(info)
    return [read_probe_set("identities", str(out / IDENTITY_DATA), str(out / IDENTITY_DATA), "classes"),
            read_probe_set("forgeries", str(out / FORGERY_DATA), str(out / FORGERY_DATA), "binary")]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with process_group(device_type(args.device)) as info:
        say = print if info.is_main else (lambda text: None)
        specs, mean_std = (args.checkpoint, None) if args.checkpoint else demo_checkpoints(say)
        # every encoder is read (and refused, by name) before anything is written
        encoders = [load_encoder(s, encoder=args.encoder, model_name=args.model, seed=args.seed, mean_std=mean_std)
                    for s in specs]
        if len({e.name for e in encoders}) != len(encoders):
            raise cli.UsageError("two --checkpoint encoders have the same name: name them NAME=SPEC")
        if info.is_main:
            cli.ensure_writable_dir(args.output_dir)
        device = resolve_device(args.device, info)
        amp_dtype = autocast_dtype(args.precision, device)
        sets = probe_sets(args, info)
        settings = ProbeSettings(
            pool=args.pool, resize=args.resize, k=args.knn_k, temperature=args.knn_temperature,
            linear=LinearSettings(epochs=args.lin_epochs, blr=args.lin_blr, batch_size=args.lin_batch_size,
                                  optimizer=args.lin_optimizer, seed=args.seed),
            batch_size=args.batch_size, num_workers=args.num_workers,
            cache_dir=None if args.no_cache else Path(args.cache_dir or Path(args.output_dir) / "feature_cache"))
        header = "\n".join(f"encoder {e.name}: {e.source} ({e.kind}), {e.img_size}px" for e in encoders)
        header += f"\nfeature: {args.pool} pooling; k-NN k={args.knn_k}, T={args.knn_temperature}; linear probe " \
                  f"{args.lin_epochs} epochs {args.lin_optimizer}"
        run_probes(encoders, sets, settings, Path(args.output_dir), device=device, amp_dtype=amp_dtype, info=info,
                   header=header, say=say)
    return 0


