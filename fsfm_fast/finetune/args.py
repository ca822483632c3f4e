"""The flags of the two fine-tuning verbs, ``python -m fsfm_fast.finetune`` (deepfakes) and ``python -m
fsfm_fast.finetune_fas`` (face anti-spoofing): their parsers, the defaults of their demos and of the
FS-Adapter recipe, and the checks that need more than one flag. Torch-free, so that ``-h`` and a bad
flag answer before the training modules are imported; the descriptions are the verbs' module texts."""
from __future__ import annotations

from .. import demo
from ..models.configs import HEADS, check_input_size, list_models
from ..runtime import cli, flags


def add_adapter_flags(parser, weight_cl: float) -> None:
    g = parser.add_argument_group("FS-Adapter")
    g.add_argument("--adapter", default="none", choices=["none", "fs"],
                   help="fs: freeze the pretrained encoder and train only the FS-Adapter, its projector and the head")
    g.add_argument("--adapter_reduction", default=4, type=flags.positive, help="adapter bottleneck width = encoder width / this")
    g.add_argument("--weight_cl", default=weight_cl, type=flags.non_negative, help="weight of the real-anchored contrastive loss")
    g.add_argument("--temperature", default=0.07, type=flags.number(0.0, low_open=True), help="temperature of the contrastive loss")



def mixup_active(args) -> bool:
    return args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None


SELECT_MODES = {"loss": "min", "auc": "max"}

# What a run with no --data_path / --train_split uses for every flag the user did not set: a tiny model
# on the synthetic forgery benchmark, sized to finish in minutes on a laptop CPU. Its frames are drawn
# at the model's input size and fed without resampling (no random resized crop or RandAugment
# geometry, plain evaluation resize), and without mixup/cutmix: resampling smears the pixel-periodic
# decoder traces that a tiny ViT can learn within 10 CPU epochs. No layer-wise lr decay either: the
# demo pretraining is minutes long, so the low layers must adapt as fast as the head. Real-data runs
# use the full recipe.
DEMO_DEFAULTS = {
    "model": "fsfm_vit_tiny_patch16",
    "input_size": 112,
    "batch_size": 32,
    "epochs": 10,
    "warmup_epochs": 1,
    "blr": 2.4e-3,
    "layer_decay": 1.0,
    "no_augment": True,
    "mixup": 0.0,
    "cutmix": 0.0,
    "eval_resize": "plain",
    "num_workers": 2,
    "output_dir": demo.FINETUNE_DIR,
    "log_every": 10,
    "finetune": "auto",
}
# What --adapter fs changes in the recipe when the flags are not given: the authors' FS-Adapter script for
# deepfakes (base lr 5e-3, no weight decay; their runs are 50 epochs long, --epochs 50).
ADAPTER_DEFAULTS = {"blr": 5e-3, "weight_decay": 0.0}


def add_model_flags(group) -> None:
    """The encoder size and input size, as both fine-tuning verbs take them."""
    group.add_argument("--model", default="fsfm_vit_base_patch16", choices=list_models(), help="encoder size")
    group.add_argument("--input_size", default=224, type=flags.positive,
                       help="image side in pixels, a multiple of the model's patch size")


def get_args_parser():
    p = cli.argument_parser("fsfm_fast.finetune", cli.module_doc("fsfm_fast.finetune.deepfake"))
    g = p.add_argument_group("model")
    add_model_flags(g)
    g.add_argument("--finetune", default="",
                   help="pretrained weights: our pretraining checkpoint, the reference's checkpoint-400.pth, a "
                        "detector checkpoint, or a timm state_dict / .safetensors; '' trains from scratch; 'auto' "
                        f"(the demo's default) takes the newest {demo.PRETRAIN_DIR}/checkpoint-*.pth if there is one")
    g.add_argument("--drop_path", default=0.1, type=flags.number(0.0, 1.0, high_open=True), help="stochastic depth rate")
    g.add_argument("--global_pool", dest="global_pool", action="store_true", default=True,
                   help="average the patch tokens, then fc_norm (the recipe; the default)")
    g.add_argument("--cls_token", dest="global_pool", action="store_false", help="classify the cls token instead of --global_pool")
    add_adapter_flags(p, weight_cl=0.01)

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", default=10, type=flags.positive, help="passes over the training split")
    g.add_argument("--warmup_epochs", default=5, type=flags.non_negative, help="linear warmup, then cosine to --min_lr")
    g.add_argument("--blr", default=2.5e-4, type=flags.learning_rate, help="lr = blr * effective batch / 256")
    g.add_argument("--lr", default=None, type=flags.learning_rate, help="absolute lr (overrides --blr)")
    g.add_argument("--min_lr", default=1e-6, type=flags.non_negative, help="the lr that the cosine schedule ends at")
    g.add_argument("--layer_decay", default=0.65, type=flags.number(0.0, 1.0, low_open=True), help="lr scale per layer from the head down")
    g.add_argument("--weight_decay", default=0.05, type=flags.non_negative, help="AdamW weight decay")
    flags.add_batch_flag(g, 64)
    flags.add_step_flags(g, clip_grad=0.0, clip_help="max grad norm; 0 disables (the reference's default)")
    flags.add_device_flags(g)

    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="timm auto-augment policy; 'none' disables")
    g.add_argument("--color_jitter", default=None, type=flags.non_negative, help="used only without --aa")
    g.add_argument("--smoothing", default=0.1, type=flags.number(0.0, 1.0, high_open=True), help="label smoothing")
    g.add_argument("--reprob", default=0.25, type=flags.probability, help="random erasing probability")
    g.add_argument("--remode", default="pixel", choices=["const", "rand", "pixel"], help="random erasing fill")
    g.add_argument("--recount", default=1, type=flags.positive, help="random erasing: regions per image")
    g.add_argument("--mixup", default=0.8, type=flags.non_negative, help="mixup alpha; 0 disables")
    g.add_argument("--cutmix", default=1.0, type=flags.non_negative, help="cutmix alpha; 0 disables")
    g.add_argument("--cutmix_minmax", default=None, type=flags.probability, nargs=2, metavar=("MIN", "MAX"),
                   help="cutmix box ratio range (overrides --cutmix alpha)")
    g.add_argument("--mixup_prob", default=1.0, type=flags.probability, help="probability of mixing a batch")
    g.add_argument("--mixup_switch_prob", default=0.5, type=flags.probability,
                   help="probability of cutmix instead of mixup when both are on")
    g.add_argument("--mixup_mode", default="batch", choices=["batch", "pair", "elem"], help="mix per batch, pair or element")
    g.add_argument("--no_augment", action="store_true",
                   help="train on plainly resized images (no crop, flip, RandAugment or erasing)")
    g.add_argument("--eval_resize", default="crop", choices=["crop", "plain"],
                   help="validation/test resize: crop = resize to input_size/0.875, centre crop (256 -> 224); "
                        "plain = resize to input_size")

    g = p.add_argument_group("data")
    g.add_argument("--data_path", "--finetune_data_path", dest="data_path", action="append", default=[],
                   help="dataset root with train/ and val/ class folders; repeat for several")
    g.add_argument("--train_split", default=None, type=flags.path("file"), help="split file of '<image path> <label>' lines")
    g.add_argument("--val_split", default=None, type=flags.path("file"), help="split file for the source validation set")
    g.add_argument("--dataset_abs_path", default=None, type=flags.path("folder"), help="folder that relative split-file paths start from")
    g.add_argument("--split_delimiter", "--delimiter_in_spilt", dest="split_delimiter", default=None,
                   help="separator of path and label in split files (default: whitespace)")
    g.add_argument("--class_map", action="append", default=[], metavar="NAME=real|fake[,...]",
                   help="label class folders that the naming rule does not know")
    g.add_argument("--normalize_from_IMN", action="store_true", help="ImageNet mean/std instead of the pretraining set's")
    g.add_argument("--mean_std", default=None, type=flags.path("file"),
                   help="a pretrain_ds_mean_std.txt to normalise with (default: the one beside --finetune)")
    flags.add_worker_flag(g, 8)
    g.add_argument("--synthetic_identities", default="96,16,32", help="demo: people in train,val,test")
    g.add_argument("--synthetic_frames", default=4, type=flags.positive, help="demo: frames per video")
    g.add_argument("--synthetic_size", default=None, type=flags.positive, help="demo: frame size in pixels (default: --input_size)")

    g = p.add_argument_group("selection and evaluation")
    g.add_argument("--select_metric", default="loss", choices=list(SELECT_MODES),
                   help="keep the checkpoint with the lowest loss / highest AUC on the source validation split")
    g.add_argument("--target_domain_selection", action="append", default=[], metavar="NAME=PATH",
                   help="ALSO keep the best checkpoint on target domain NAME's validation split (PATH/val), as the "
                        "reference does for DiFF: checkpoint-best-target_NAME.pth, labelled as target-domain "
                        "selection; the honest source-selected checkpoint-best.pth is kept as always")
    g.add_argument("--test", action="append", default=[], metavar="NAME=PATH[,PATH...]",
                   help="after training, evaluate checkpoint-best.pth on these test sets (as fsfm_fast.evaluate)")
    g.add_argument("--eval_every", default=0, type=flags.count, help="validate every N iterations; 0 = every epoch")
    g.add_argument("--eval_batch_size", default=None, type=flags.positive, help="default: 2 x --batch_size")

    g = p.add_argument_group("run")
    flags.add_run_flags(g, output_dir="output_finetune", keep_last=2, save_every=0)
    return demo.note_defaults(p, DEMO_DEFAULTS)


def parse_args(argv: list[str] | None = None):
    args = demo.parse_with_defaults(get_args_parser(), argv, lambda a: not a.data_path and not a.train_split,
                                    DEMO_DEFAULTS, [(lambda a: a.adapter == "fs", ADAPTER_DEFAULTS)])
    args.eval_batch_size = args.eval_batch_size or 2 * args.batch_size
    flags.check(args)
    check_input_size(args.model, args.input_size)
    # each number's range is its type's (runtime.flags); what remains needs two flags at once
    if args.train_split and not args.val_split and not args.data_path:
        raise cli.UsageError("--train_split needs --val_split (model selection uses the source validation split)")
    if mixup_active(args) and args.batch_size % 2:
        raise cli.UsageError(f"--batch_size must be even with --mixup/--cutmix (they pair samples), got {args.batch_size}")
    args.aa = None if str(args.aa).lower() in ("none", "") else args.aa
    return args


FAS_SELECT_MODES = {"hter": "min", "auc": "max", "loss": "min"}
# What a run with no --source/--target uses for every flag the user did not set: a tiny model on the
# synthetic benchmark at 64 px, sized to finish in minutes on a laptop CPU; a larger lr than the
# recipe's, because 300 iterations are not 4000.
FAS_DEMO_DEFAULTS = {
    "model": "fsfm_vit_tiny_patch16",
    "input_size": 64,
    "batch_per_group": 8,
    "iterations": 300,
    "eval_every": 50,
    "lr": 5e-4,
    "seeds": "0,1,2",
    "val_fraction": 0.25,
    "num_workers": 2,
    "log_every": 10,
    "output_dir": demo.FAS_DIR,
    "finetune": "auto",
}
# What --adapter fs changes when the flags are not given: the authors' FS-Adapter script for FAS.
FAS_ADAPTER_DEFAULTS = {"lr": 5e-2, "weight_decay": 5e-5}


def get_fas_parser():
    p = cli.argument_parser("fsfm_fast.finetune_fas", cli.module_doc("fsfm_fast.finetune.fas"))
    g = p.add_argument_group("model")
    add_model_flags(g)
    g.add_argument("--finetune", "--pt_model", dest="finetune", default="",
                   help="pretrained encoder (as fsfm_fast.finetune --finetune); 'auto' (the demo's default) takes the "
                        "newest " + demo.PRETRAIN_DIR + "/checkpoint-*.pth if there is one")
    g.add_argument("--head", default="fas", choices=HEADS,
                   help="fas: the reference's head as it computes it (on every token: bottleneck 512, dropout, "
                        "scaling across tokens; the pooled slot into in-place normalised weights); fas_pooled: "
                        "the same modules on the pooled feature (an ablation); linear: one linear layer")
    g.add_argument("--drop_path", default=0.0, type=flags.number(0.0, 1.0, high_open=True), help="the reference's FAS default is 0")
    add_adapter_flags(p, weight_cl=0.1)

    g = p.add_argument_group("data")
    g.add_argument("--source", action="append", default=[], metavar="NAME=PATH",
                   help="a source domain (PATH/train, and PATH/val if it has one); repeat for each")
    g.add_argument("--target", default=None, metavar="NAME=PATH", help="the target domain (PATH/test)")
    g.add_argument("--val_fraction", default=0.1, type=flags.number(0.0, 1.0, high_open=True),
                   help="share of each source class's training videos held out for selection and the honest "
                        "threshold (sources without a val/ folder)")
    g.add_argument("--split_seed", default=0, type=flags.seed, help="seed of that hold-out (the same for every --seeds)")
    g.add_argument("--class_map", action="append", default=[], metavar="NAME=real|fake[,...]",
                   help="label class folders that the naming rule does not know (e.g. print=fake)")
    g.add_argument("--normalize_from_IMN", action="store_true",
                   help="ImageNet mean/std instead of the pretraining set's")
    g.add_argument("--mean_std", default=None, type=flags.path("file"), help="a pretrain_ds_mean_std.txt (default: the one beside --finetune)")
    flags.add_worker_flag(g, 4)
    g.add_argument("--synthetic_target", default=demo.SPOOF_TARGET, choices=demo.SPOOF_DOMAINS,
                   help="demo: the synthetic domain held out (the others train)")
    g.add_argument("--synthetic_identities", default="24,12", help="demo: people per domain in train,test")
    g.add_argument("--synthetic_frames", default=2, type=flags.positive, help="demo: frames per video")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_per_group", default=12, type=flags.positive, help="frames of each (source domain, class) per batch")
    g.add_argument("--iterations", default=4000, type=flags.positive, help="optimizer steps of each seed's run")
    g.add_argument("--lr", default=1e-4, type=flags.learning_rate, help="Adam learning rate (constant)")
    g.add_argument("--weight_decay", default=1e-6, type=flags.non_negative, help="Adam's L2 weight decay")
    flags.add_step_flags(g, clip_grad=0.0, clip_help="max grad norm; 0 disables (the reference's)")
    flags.add_device_flags(g)

    g = p.add_argument_group("selection and evaluation")
    g.add_argument("--eval_every", default=100, type=flags.positive, help="validate (and select) every N iterations")
    g.add_argument("--select_metric", default="hter", choices=list(FAS_SELECT_MODES),
                   help="the honest checkpoint: best video HTER (the reference's criterion), AUC or loss on the "
                        "held-out source data; of equal values the later checkpoint, as the reference")
    g.add_argument("--eval_batch_size", default=128, type=flags.positive, help="images per validation batch")

    g = p.add_argument_group("run")
    g.add_argument("--seeds", default="0,1,2,3,4", type=flags.int_list(),
                   help="one run per seed, reported as mean ± std (the demo runs 3 seeds: 0,1,2)")
    flags.add_run_flags(g, output_dir="output_fas", keep_last=1, save_every=0, seed_flag=False,
                        resume_help="auto: each seed continues from its newest checkpoint in seed_<s>/")
    return demo.note_defaults(p, FAS_DEMO_DEFAULTS)


def parse_fas_args(argv: list[str] | None = None):
    args = demo.parse_with_defaults(get_fas_parser(), argv, lambda a: not a.source and a.target is None, FAS_DEMO_DEFAULTS,
                                    [(lambda a: a.adapter == "fs", FAS_ADAPTER_DEFAULTS)])
    flags.check(args)
    check_input_size(args.model, args.input_size)
    if args.resume not in ("", "auto"):
        raise cli.UsageError(f"--resume takes 'auto' here (each seed continues from its newest checkpoint in "
                             f"seed_<s>/), got {args.resume!r}")
    args.seed_list = [int(x) for x in args.seeds.split(",") if x.strip()]  # checked by --seeds' type
    if not (args.demo or (args.source and args.target is not None)):
        raise cli.UsageError("give --source NAME=PATH (one or more) and --target NAME=PATH, or neither for the "
                             "synthetic demo")
    args.sources = flags.parse_tests(args.source, "--source")
    target = flags.parse_tests([args.target], "--target") if args.target else {}
    args.target_domain = next(iter(target.items()), None)
    if args.target_domain and args.target_domain[0] in args.sources:
        raise cli.UsageError(f"--target {args.target_domain[0]} is also a --source: leave it out of the sources")
    return args
