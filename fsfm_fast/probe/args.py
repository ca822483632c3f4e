"""The flags of ``python -m fsfm_fast.probe``, importable without torch so that ``-h`` and a bad flag
answer at once; the description is the verb's module text."""
from __future__ import annotations

from pathlib import Path

from ..demo import PROBE_DIR, parse_with_defaults
from ..runtime import cli, flags

ENCODER_CHOICES = ("online", "target")  # the networks of a pretraining checkpoint
POOLS = {"avg": "avg", "cls": "token"}  # our name -> timm's
RESIZES = ("plain", "crop")
DEFAULT_K, DEFAULT_TEMPERATURE = 20, 0.07  # DINO's k-NN evaluation
OPTIMIZERS = ("sgd", "lars")
LABELLINGS = ("auto", "binary", "classes")
DEMO_DEFAULTS = {"output_dir": PROBE_DIR}


def get_args_parser():
    p = cli.argument_parser("fsfm_fast.probe", cli.module_doc("fsfm_fast.probe.__main__"))
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
    g.add_argument("--synthetic_identities", default=32, type=flags.integer(2), help="people in the synthetic identity set")
    g.add_argument("--synthetic_frames", default=4, type=flags.positive, help="pictures per person in each split")
    g.add_argument("--synthetic_forgery_people", default=24, type=flags.integer(2),
                   help="people in each split of the synthetic forgery set")
    g = p.add_argument_group("probes")
    g.add_argument("--knn_k", default=DEFAULT_K, type=flags.positive, help="neighbours of the weighted k-NN")
    g.add_argument("--knn_temperature", default=DEFAULT_TEMPERATURE, type=flags.number(0.0, low_open=True),
                   help="temperature of the k-NN's similarity weights, exp(similarity / T)")
    g.add_argument("--lin_epochs", default=100, type=flags.positive, help="epochs of the linear probe over the cached features")
    g.add_argument("--lin_blr", default=0.1, type=flags.number(0.0, low_open=True), help="linear probe lr = blr * batch / 256")
    g.add_argument("--lin_batch_size", default=256, type=flags.positive, help="batch of the linear probe")
    g.add_argument("--lin_optimizer", default="sgd", choices=OPTIMIZERS, help="SGD with momentum, or LARS (MAE's)")
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default="output_probe", help="where metrics.json, table.md and embedding.png go")
    g.add_argument("--cache_dir", default=None, help="feature cache (default: <output_dir>/feature_cache)")
    g.add_argument("--no_cache", action="store_true", help="neither read nor write cached features")
    g.add_argument("--seed", default=0, type=flags.seed, help="the linear probe's draws and a random encoder's weights")
    flags.add_batch_flag(g, 64)
    flags.add_worker_flag(g, 2)
    flags.add_device_flags(g)
    return p


def _is_demo(args) -> bool:
    return not args.checkpoint and not args.data and args.train is None and args.test is None


def check_args(args) -> None:
    """Every flag and path, before any work: one line naming the flag."""
    flags.check(args)
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


def parse_args(argv=None):
    args = parse_with_defaults(get_args_parser(), argv, _is_demo, DEMO_DEFAULTS)
    check_args(args)
    return args
