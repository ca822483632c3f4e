"""The flags of ``python -m fsfm_fast.pretrain``: the parser (names as the reference's
``main_pretrain.py``), the defaults of a run with no data, and the checks of every flag and path that
run before any expensive work, each failing in one line that names the flag."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import demo
from ..models.configs import REP_POS_EMBEDS, check_input_size, list_models
from ..runtime import cli, flags
from ..runtime.cli import UsageError
from ..runtime.flags import LOADERS

DESCRIPTION = """FSFM-3C self-supervised pretraining: ``python -m fsfm_fast.pretrain``.

With no ``--data_path`` it pretrains a tiny model on an embedded synthetic face set, on whatever device
is there; with reference-layout folders or shard folders it runs the paper's recipe, on one GPU or many
through ``torchrun``. Flag names follow the reference implementation's ``main_pretrain.py``.

Examples:
  python -m fsfm_fast.pretrain                                   # the demo: tiny model, synthetic faces
  python -m fsfm_fast.pretrain --data_path DATA --output_dir out  # the recipe (ViT-B/16, 224 px, 400 epochs)
  torchrun --nproc_per_node 8 -m fsfm_fast.pretrain --data_path SHARDS --batch_size 256

"demo" in a flag's help: the value used without --data_path.
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
    g.add_argument("--model", default="fsfm_vit_base_patch16", choices=list_models(), help="network size")
    g.add_argument("--input_size", default=224, type=flags.positive,
                   help="image side in pixels, a multiple of the model's patch size")
    g.add_argument("--norm_pix_loss", dest="norm_pix_loss", action="store_true", default=True,
                   help="normalise each target patch by its mean/std (the recipe's setting)")
    g.add_argument("--no_norm_pix_loss", dest="norm_pix_loss", action="store_false",
                   help="reconstruct raw pixels instead")
    g.add_argument("--mask_ratio", default=0.75, type=flags.number(0.0, 1.0, low_open=True, high_open=True),
                   help="fraction of the patches masked")
    g.add_argument("--mask_strategy", default="crfr_p", choices=["crfr_p", "crfr_r", "fr", "random"],
                   help="CRFR-P (the paper's), CRFR-R, facial-region or random masking")
    g.add_argument("--mask_region", default="batch", choices=["batch", "image"],
                   help="draw the covered facial region once per batch (reference) or per image")
    g.add_argument("--weight_sfr", default=0.007, type=flags.non_negative,
                   help="weight of the facial-region reconstruction loss")
    g.add_argument("--weight_cl", default=0.1, type=flags.non_negative, help="weight of the contrastive loss")
    g.add_argument("--cl_loss", default="SimSiam", type=str.lower, choices=["simsiam", "byol"],
                   help="the contrastive loss between the online and target branches")
    g.add_argument("--t_momentum", default=0.996, type=flags.probability, help="initial EMA momentum of the target")
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
    g.add_argument("--epochs", default=400, type=flags.positive, help="passes over the data")
    g.add_argument("--blr", default=1.5e-4, type=flags.learning_rate, help="lr = blr * effective batch / 256")
    g.add_argument("--lr", default=None, type=flags.learning_rate, help="absolute lr (overrides --blr)")
    g.add_argument("--min_lr", default=0.0, type=flags.non_negative, help="the lr that the cosine schedule ends at")
    g.add_argument("--warmup_epochs", default=40, type=flags.count, help="epochs of linear lr warmup")
    g.add_argument("--weight_decay", default=0.05, type=flags.non_negative, help="AdamW weight decay")
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
    g.add_argument("--mean_std_samples", default=0, type=flags.count,
                   help="images used to compute the dataset mean/std; 0 = all (as the reference)")
    g.add_argument("--synthetic_images", default=1024, type=flags.positive,
                   help="size of the embedded synthetic set used when no --data_path is given")
    flags.add_worker_flag(g, 8)

    g = p.add_argument_group("health monitor")
    g.add_argument("--probe_data", default=None, metavar="PATH",
                   help="a small labelled set (train/ and test/ class folders, e.g. identities) on which a k-NN probe "
                        "of the online and target encoders runs every --probe_every epochs (python -m "
                        "fsfm_fast.probe); 'synthetic': held-out synthetic identities written into the output folder")
    g.add_argument("--probe_every", default=1, type=flags.positive, help="epochs between health-monitor probes")

    g = p.add_argument_group("run")
    flags.add_run_flags(g, output_dir="output_pretrain", keep_last=3, save_every=1000)
    g.add_argument("--log_dir", default=None, help="TensorBoard/JSON log folder (default: output_dir)")
    return demo.note_defaults(p, DEMO_DEFAULTS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = demo.parse_with_defaults(get_args_parser(), argv, lambda a: not a.data_path, DEMO_DEFAULTS)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """What the typed flags cannot check alone (each number's range is its type's, ``runtime.flags``):
    one line naming the flag, before anything is read or written."""
    flags.check(args)
    check_input_size(args.model, args.input_size)


def check_paths(args: argparse.Namespace) -> None:
    """Every path, before any expensive work: data folders exist and have a known layout, the
    output folders can be written, a named checkpoint exists."""
    from ..data.loaders import detect_layout  # torch: after the flags are parsed

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
