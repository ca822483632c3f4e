"""The flags of ``python -m fsfm_fast.pretrain``: the parser (names as the reference's
``main_pretrain.py``), the defaults of a run with no data, and the checks of every flag and path that
run before any expensive work, each failing in one line that names the flag."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..runtime import cli
from ..runtime.cli import UsageError
from ..data.loaders import LOADERS, detect_layout
from ..models import REP_POS_EMBEDS, get_config, list_models

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
    "output_dir": "output_demo",
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
    g.add_argument("--batch_size", default=64, type=int, help="per process")
    g.add_argument("--epochs", default=400, type=int)
    g.add_argument("--accum_iter", default=1, type=int)
    g.add_argument("--blr", default=1.5e-4, type=float, help="lr = blr * effective batch / 256")
    g.add_argument("--lr", default=None, type=float, help="absolute lr (overrides --blr)")
    g.add_argument("--min_lr", default=0.0, type=float)
    g.add_argument("--warmup_epochs", default=40, type=int)
    g.add_argument("--weight_decay", default=0.05, type=float)
    g.add_argument("--clip_grad", default=1.0, type=float, help="max grad norm; <= 0 disables")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on CUDA, fp32 on CPU")
    g.add_argument("--compile", nargs="?", const="default", default="none", choices=COMPILE_MODES,
                   help="torch.compile the networks; '--compile' alone is 'default'; 'reduce-overhead' "
                        "also captures CUDA graphs (see the README for which to use when)")
    g.add_argument("--max_steps", default=0, type=int,
                   help="stop after this many iterations (schedules still span --epochs); 0 = no cap")
    g.add_argument("--max_nonfinite", default=20, type=int,
                   help="stop with an error after this many non-finite losses in a row (checked when "
                        "logging, every --log_every iterations)")

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
    g.add_argument("--num_workers", default=8, type=int)

    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default="output_pretrain")
    g.add_argument("--log_dir", default=None, help="TensorBoard/JSON log folder (default: output_dir)")
    g.add_argument("--resume", default="", help="checkpoint to continue from, or 'auto' for the newest")
    g.add_argument("--save_every", default=1000, type=int,
                   help="checkpoint every N iterations; 0 = only at the end and on a stop signal")
    g.add_argument("--keep_last", default=3, type=int, help="numbered checkpoints to keep")
    g.add_argument("--log_every", default=20, type=int, help="log (and read the losses back) every N iterations")
    g.add_argument("--seed", default=0, type=int)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    return p


def _given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The flags on the command line (the parser takes no abbreviations, so names are whole)."""
    given = set()
    for action in parser._actions:
        for opt in action.option_strings:
            if any(a == opt or a.startswith(opt + "=") for a in argv):
                given.add(action.dest)
    return given


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_args_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.demo = not args.data_path
    if args.demo:
        given = _given_flags(parser, argv)
        for key, value in DEMO_DEFAULTS.items():
            if key not in given:
                setattr(args, key, value)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Every flag's value, before anything is read or written: one line naming the flag."""
    for flag in ("batch_size", "epochs", "accum_iter", "log_every", "keep_last", "max_nonfinite"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    for flag in ("save_every", "max_steps", "warmup_epochs", "num_workers", "mean_std_samples"):
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
    if not 0.0 < args.mask_ratio < 1.0:
        raise UsageError(f"--mask_ratio must be in (0, 1), got {args.mask_ratio}")
    if not 0.0 <= args.t_momentum <= 1.0:
        raise UsageError(f"--t_momentum must be in [0, 1], got {args.t_momentum}")
    patch = get_config(args.model).patch_size
    if args.input_size < patch or args.input_size % patch:
        raise UsageError(f"--input_size {args.input_size} is not a multiple of {args.model}'s patch size {patch}")
    try:
        device = torch.device("cpu" if args.device == "auto" else args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {args.device!r}: pretraining runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device} was asked for, but torch sees no CUDA device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) here")


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
    if args.resume and args.resume != "auto" and not Path(args.resume).is_file():
        raise UsageError(f"--resume {args.resume}: no such checkpoint file")
