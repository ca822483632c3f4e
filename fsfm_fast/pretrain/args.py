"""The flags of ``python -m fsfm_fast.pretrain``: the parser (names as the reference's
``main_pretrain.py``), the defaults of a run with no data, and the checks of every flag and path that
run before any expensive work, each failing in one line that names the flag."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import demo
from ..data.loaders import LOADERS, detect_layout
from ..models import REP_POS_EMBEDS, get_config, list_models
from ..runtime import cli, flags
from ..runtime.cli import UsageError

DESCRIPTION = """FSFM-3C self-supervised pretraining: ``python -m fsfm_fast.pretrain``.

With no ``--data_path`` it pretrains a tiny model on an embedded synthetic face set, on whatever device
is there; with reference-layout folders or shard folders it runs the paper's recipe, on one GPU or many
through ``torchrun``. Flag names follow the reference implementation's ``main_pretrain.py``.
"""

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")

# What a run with no --data_path uses for every flag the user did not set: a tiny model on the
# embedded synthetic faces, sized so that it finishes in minutes on a laptop CPU.
DEMO_DEFAULTS = {
    "model": "fsfm_vit_tiny_patch16",
    "input_size": 112,
    "batch_size": 32,
    "epochs": 8,
    "warmup_epochs": 1,
    "blr": 1e-2,
    "num_workers": 2,
    "output_dir": demo.PRETRAIN_DIR,
    "save_every": 100,
    "log_every": 10,
}


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.argument_parser("fsfm_fast.pretrain", DESCRIPTION)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="fsfm_vit_base_patch16", choices=list_models())
    g.add_argument("--input_size", default=224, type=int)
    g.add_argument("--norm_pix_loss", dest="norm_pix_loss", action="store_true", default=True,
                   help="normalise each target patch by its mean/std (the recipe's setting)")
    g.add_argument("--no_norm_pix_loss", dest="norm_pix_loss", action="store_false")
    g.add_argument("--mask_ratio", default=0.75, type=float)
    g.add_argument("--mask_strategy", default="crfr_p", choices=["crfr_p", "crfr_r", "fr", "random"])
    g.add_argument("--mask_region", default="batch", choices=["batch", "image"],
                   help="draw the covered facial region once per batch (reference) or per image")
    g.add_argument("--weight_sfr", default=0.007, type=float)
    g.add_argument("--weight_cl", default=0.1, type=float)
    g.add_argument("--cl_loss", default="SimSiam", type=str.lower, choices=["simsiam", "byol"])
    g.add_argument("--t_momentum", default=0.996, type=float, help="initial EMA momentum of the target")
    g.add_argument("--rep_decoder_pos_embed", default="zeros", choices=REP_POS_EMBEDS,
                   help="the rep decoder's frozen position embedding: zeros as the reference release "
                        "(faithful), or sin-cos (an ablation)")
    g.add_argument("--ops", default="auto", choices=["auto", "torch", "triton"],
                   help="backend of gather_visible/restore_masked/fsfm_loss: 'auto' runs the Triton "
                        "kernels on CUDA tensors (each checked against the reference at start, and "
                        "replaced by it if it fails), 'torch' the plain-PyTorch reference, 'triton' "
                        "insists (a failed start-up check is an error)")

    g = p.add_argument_group("optimisation")
    flags.add_batch_flag(g, 64)
    g.add_argument("--epochs", default=400, type=int)
    g.add_argument("--blr", default=1.5e-4, type=float, help="lr = blr * effective batch / 256")
    g.add_argument("--lr", default=None, type=float, help="absolute lr (overrides --blr)")
    g.add_argument("--min_lr", default=0.0, type=float)
    g.add_argument("--warmup_epochs", default=40, type=int)
    g.add_argument("--weight_decay", default=0.05, type=float)
    flags.add_step_flags(g, clip_grad=1.0, clip_help="max grad norm (the recipe's 1.0); 0 disables")
    flags.add_device_flags(g)
    g.add_argument("--compile", nargs="?", const="default", default="none", choices=COMPILE_MODES,
                   help="torch.compile the networks; '--compile' alone is 'default'; 'reduce-overhead' "
                        "also captures CUDA graphs (see the README for which to use when)")

    g = p.add_argument_group("data")
    g.add_argument("--data_path", "--pretrain_data_path", dest="data_path", action="append", default=[],
                   help="reference-layout root (images/ + parsing_maps/) or shard folder (dataset.json from "
                        "python -m fsfm_fast.data.make_shards); repeat for several")
    g.add_argument("--loader", default="auto", choices=list(LOADERS),
                   help="dali: DALI over shard folders; torch: DataLoader (nvJPEG decode on CUDA for shards); "
                        "auto: dali when every path is a shard folder and DALI is installed, else torch")
    g.add_argument("--augment", "--apply_simple_augment", dest="augment", action="store_true",
                   help="random resized crop (0.2, 1) + flip, applied to image and parsing map alike")
    g.add_argument("--normalize_from_IMN", action="store_true", help="ImageNet mean/std instead of the data's")
    g.add_argument("--mean_std_samples", default=0, type=int,
                   help="images used to compute the dataset mean/std; 0 = all (as the reference)")
    g.add_argument("--synthetic_images", default=1024, type=int,
                   help="size of the embedded synthetic set used when no --data_path is given")
    flags.add_worker_flag(g, 8)

    g = p.add_argument_group("health monitor")
    g.add_argument("--probe_data", default=None, metavar="PATH",
                   help="a small labelled set (train/ and test/ class folders, e.g. identities) on which a k-NN probe "
                        "of the online and target encoders runs every --probe_every epochs (python -m "
                        "fsfm_fast.probe); 'synthetic': held-out synthetic identities written into the output folder")
    g.add_argument("--probe_every", default=1, type=int, help="epochs between health-monitor probes")

    g = p.add_argument_group("run")
    flags.add_run_flags(g, output_dir="output_pretrain", keep_last=3, save_every=1000)
    g.add_argument("--log_dir", default=None, help="TensorBoard/JSON log folder (default: output_dir)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = demo.parse_with_defaults(get_args_parser(), argv, lambda a: not a.data_path, DEMO_DEFAULTS)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Every flag's value, before anything is read or written: one line naming the flag."""
    flags.check(args)
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    for flag in ("warmup_epochs", "mean_std_samples"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    if args.demo and args.synthetic_images < 1:
        raise UsageError(f"--synthetic_images must be >= 1, got {args.synthetic_images}")
    if not args.blr > 0:
        raise UsageError(f"--blr must be > 0, got {args.blr}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    for flag in ("min_lr", "weight_decay"):
        if not getattr(args, flag) >= 0:
            raise UsageError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    if args.probe_every < 1:
        raise UsageError(f"--probe_every must be >= 1, got {args.probe_every}")
    if not 0.0 < args.mask_ratio < 1.0:
        raise UsageError(f"--mask_ratio must be in (0, 1), got {args.mask_ratio}")
    if not 0.0 <= args.t_momentum <= 1.0:
        raise UsageError(f"--t_momentum must be in [0, 1], got {args.t_momentum}")
    patch = get_config(args.model).patch_size
    if args.input_size < patch or args.input_size % patch:
        raise UsageError(f"--input_size {args.input_size} is not a multiple of {args.model}'s patch size {patch}")


def check_paths(args: argparse.Namespace) -> None:
    """Every path, before any expensive work: data folders exist and have a known layout, the
    output folders can be written, a named checkpoint exists."""
    for path in args.data_path:
        if not Path(path).exists():
            raise UsageError(f"--data_path {path} does not exist")
        try:
            detect_layout(path)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(f"--data_path {exc}") from None
    cli.ensure_writable_dir(args.output_dir, "--output_dir")
    if args.log_dir:
        cli.ensure_writable_dir(args.log_dir, "--log_dir")
    if args.probe_data not in (None, "synthetic") and not Path(args.probe_data).exists():
        raise UsageError(f"--probe_data {args.probe_data} does not exist")
    if args.resume and args.resume != "auto" and not Path(args.resume).is_file():
        raise UsageError(f"--resume {args.resume}: no such checkpoint file")
