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

from ..data.forgery import write_forgery_benchmark
from ..data.identities import write_identity_benchmark
from ..data.samples import parse_class_map
from ..demo import PRETRAIN_DIR, PROBE_DIR, parse_with_defaults
from ..engine.checkpoint import CheckpointManager
from ..formats import MEAN_STD_FILE, read_mean_std, safe_load
from ..pretrain.args import DEMO_DEFAULTS as PRETRAIN_DEMO
from ..runtime import cli, flags
from ..runtime.devices import autocast_dtype, device_type, resolve_device
from ..runtime.distributed import DistInfo, barrier, process_group
from .encoders import ENCODER_CHOICES, load_encoder
from .features import POOLS, RESIZES
from .knn import DEFAULT_K, DEFAULT_TEMPERATURE
from .linear import OPTIMIZERS, LinearSettings
from .run import ProbeSettings, run_probes
from .sets import LABELLINGS, read_probe_set

IDENTITY_DATA, FORGERY_DATA = "synthetic_identities", "synthetic_forgeries"
DEMO_DEFAULTS = {"output_dir": PROBE_DIR}


def get_args_parser():
    p = cli.argument_parser("fsfm_fast.probe", __doc__)
    g = p.add_argument_group("encoders")
    g.add_argument("--checkpoint", action="append", default=[], metavar="[NAME=]SPEC",
                   help="an encoder to probe; repeat to compare (default: the demo pretraining's and a random one)")
    g.add_argument("--encoder", default=None, choices=ENCODER_CHOICES,
                   help="which network of a pretraining checkpoint (default: online)")
    g.add_argument("--model", default=None, help="the FSFM size of a state_dict whose keys do not tell it")
    g.add_argument("--pool", default="avg", choices=list(POOLS),
                   help="the feature: mean of the patch tokens, or the class token (both after the final norm)")
    g = p.add_argument_group("data")
    g.add_argument("--data", action="append", default=[], metavar="[NAME=]ROOT",
                   help="a set with train/ and test/ class folders; repeat for several")
    g.add_argument("--train", default=None, help="with --test: the train split (folder of class folders or split file)")
    g.add_argument("--test", default=None, help="with --train: the test split")
    g.add_argument("--labels", default="auto", choices=LABELLINGS,
                   help="binary: real/fake by the folder-name rule (fake = 1); classes: one class per folder, "
                        "indices in sorted order of the train folder names; auto: binary when the rule names "
                        "every folder")
    g.add_argument("--class_map", action="append", default=[], metavar="NAME=real|fake[,...]",
                   help="label class folders the naming rule does not know")
    g.add_argument("--resize", default="plain", choices=RESIZES,
                   help="plain: resize the whole image (aligned faces); crop: resize to size/0.875, centre crop")
    g.add_argument("--synthetic_identities", default=32, type=int, help="people in the synthetic identity set")
    g.add_argument("--synthetic_frames", default=4, type=int, help="pictures per person in each split")
    g.add_argument("--synthetic_forgery_people", default=24, type=int,
                   help="people in each split of the synthetic forgery set")
    g = p.add_argument_group("probes")
    g.add_argument("--knn_k", default=DEFAULT_K, type=int)
    g.add_argument("--knn_temperature", default=DEFAULT_TEMPERATURE, type=float)
    g.add_argument("--lin_epochs", default=100, type=int)
    g.add_argument("--lin_blr", default=0.1, type=float, help="linear probe lr = blr * batch / 256")
    g.add_argument("--lin_batch_size", default=256, type=int)
    g.add_argument("--lin_optimizer", default="sgd", choices=OPTIMIZERS)
    g = p.add_argument_group("run")
    p.add_argument("--output_dir", default="output_probe")
    g.add_argument("--cache_dir", default=None, help="feature cache (default: <output_dir>/feature_cache)")
    g.add_argument("--no_cache", action="store_true", help="neither read nor write cached features")
    g.add_argument("--seed", default=0, type=int, help="the linear probe's draws and a random encoder's weights")
    flags.add_batch_flag(g, 64)
    flags.add_worker_flag(g, 2)
    flags.add_device_flags(g)
    return p


def _is_demo(args) -> bool:
    return not args.checkpoint and not args.data and args.train is None and args.test is None


def check_args(args) -> None:
    """Every flag and path, before any work: one line naming the flag."""
    flags.check(args)
    for flag in ("knn_k", "lin_epochs", "lin_batch_size", "synthetic_frames"):
        if getattr(args, flag) < 1:
            raise cli.UsageError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    for flag in ("synthetic_identities", "synthetic_forgery_people"):
        if getattr(args, flag) < 2:
            raise cli.UsageError(f"--{flag} must be >= 2, got {getattr(args, flag)}")
    for flag in ("knn_temperature", "lin_blr"):
        if not getattr(args, flag) > 0:
            raise cli.UsageError(f"--{flag} must be > 0, got {getattr(args, flag)}")
    if (args.train is None) != (args.test is None):
        raise cli.UsageError("give --train and --test together")
    for spec in [s.partition("=")[2] or s for s in args.data] + [s for s in (args.train, args.test) if s]:
        for path in filter(None, (p.strip() for p in spec.split(","))):
            if not path.startswith("dfb:") and not Path(path).exists():  # dfb: specs are checked by their reader
                raise cli.UsageError(f"dataset path {path} does not exist")
    for item in args.checkpoint:
        spec = item if Path(item).exists() else item.partition("=")[2] or item
        if not spec.startswith(("timm:", "random:")) and not Path(spec).exists():
            raise cli.UsageError(f"--checkpoint {spec} does not exist")


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
    args = parse_with_defaults(get_args_parser(), argv, _is_demo, DEMO_DEFAULTS)
    check_args(args)
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


if __name__ == "__main__":
    sys.exit(cli.run(main, "fsfm_fast.probe"))
