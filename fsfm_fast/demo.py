"""The demo runs: every verb runs with no data flags on embedded synthetic data, and the verbs find each
other's demo results in these folders (pretraining -> fine-tuning -> evaluate/export -> predict).

``parse_with_defaults`` is the one way a verb applies its demo's defaults (and any other recipe's, such
as the FS-Adapter's) to the flags the user did not give. A demo run into its own demo folder replaces the earlier demo run there
(``--overwrite``), unless it is told to ``--resume``.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from .runtime.cli import UsageError

PRETRAIN_DIR = "output_demo"  # python -m fsfm_fast.pretrain; fine-tuning's --finetune auto looks here
FINETUNE_DIR = "output_demo_finetune"  # python -m fsfm_fast.finetune; its detector: checkpoint-best.pth
FAS_DIR = "output_demo_fas"
EXPORT_DIR = "output_demo_export"
PREDICT_DIR = "output_demo_predict"
PROBE_DIR = "output_demo_probe"  # python -m fsfm_fast.probe: the demo encoder against a random one
FACES_DATA = "synthetic_faces"  # the data folders, inside each run's output folder
FORGERY_DATA = "synthetic_forgeries"
SPOOF_DATA = "synthetic_fas"
SPOOF_DOMAINS = ("webcam", "phone", "cctv", "laptop")  # the synthetic camera domains (data/spoof.py's DOMAINS)
SPOOF_TARGET = "laptop"  # the one held out: capture conditions between the others' in every respect


def parse_with_defaults(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                        is_demo: Callable[[argparse.Namespace], bool], demo_defaults: dict,
                        recipes: Sequence[tuple[Callable[[argparse.Namespace], bool], dict]] = (),
                        ) -> argparse.Namespace:
    """``argv`` parsed with ``demo_defaults`` when ``is_demo(args)``, then each recipe's defaults whose test
    holds (later ones win); a flag the user gave keeps its value, since a parser's defaults only fill the
    flags that are absent. ``args.demo`` says whether the demo's applied."""
    first = parser.parse_args(argv)
    demo = is_demo(first)
    if demo:
        parser.set_defaults(**demo_defaults)
    for applies, defaults in recipes:
        if applies(first):
            parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    args.demo = demo
    if demo and "output_dir" in demo_defaults and getattr(args, "output_dir", None) == demo_defaults["output_dir"]:
        # Running a demo again replaces its own earlier run (its data is reused): a newcomer repeats the
        # README's commands. Any other folder, and --resume, keep the rule that a run never replaces another.
        args.overwrite = getattr(args, "overwrite", False) or not getattr(args, "resume", "")
    return args


def note_defaults(parser: argparse.ArgumentParser, demo_defaults: dict) -> argparse.ArgumentParser:
    """Mark each flag whose default the demo replaces, so that ``-h`` shows both (``cli.HelpFormatter``)."""
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        if action.dest not in demo_defaults or action.default == demo_defaults[action.dest]:
            continue
        if action.nargs == 0 and action.const != demo_defaults[action.dest]:
            continue  # of a pair of switches on one dest, the one the demo turns on carries the note
        action.demo_default = demo_defaults[action.dest]
    return parser


def demo_evaluation(output_dir: str | Path = FINETUNE_DIR) -> tuple[Path, dict[str, str]]:
    """The demo detector and its test set, for ``python -m fsfm_fast.evaluate`` with no flags."""
    from .formats import selected_checkpoint  # torch: not for the parsers that import this module

    checkpoint = selected_checkpoint(output_dir)
    if not checkpoint.is_file():
        raise UsageError(f"no --checkpoint given and no demo detector at {checkpoint}: "
                         "run python -m fsfm_fast.finetune first, or pass --checkpoint and --test")
    return checkpoint, {"synthetic": str(Path(output_dir) / FORGERY_DATA)}
