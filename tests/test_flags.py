"""Every flag of every verb is checked by the shared validators (``runtime.flags``) before any work, in
one line that names the flag and the value (exit 2, no traceback); ``-h`` is answered without torch or
timm; the help shows each default once, keeps the descriptions' lines, and every flag has help.

Parsing only: nothing here trains, reads data or imports a network."""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fsfm_fast import demo, detector_args
from fsfm_fast.finetune import args as finetune_args
from fsfm_fast.pretrain import args as pretrain_args
from fsfm_fast.probe import args as probe_args
from fsfm_fast.runtime import cli, flags

REPO = Path(__file__).resolve().parents[1]

VERBS = ("pretrain", "finetune", "finetune_fas", "evaluate", "export", "predict", "prepare", "data.make_shards",
         "probe")


def _prepare_parser():
    return importlib.import_module("fsfm_fast.prepare.__main__").get_args_parser()


def _make_shards_parser():
    return importlib.import_module("fsfm_fast.data.make_shards").get_args_parser()


# verb -> what `python -m fsfm_fast.<verb>` parses and checks before it imports the verb's body
PARSE = {
    "pretrain": pretrain_args.parse_args,
    "finetune": finetune_args.parse_args,
    "finetune_fas": finetune_args.parse_fas_args,
    "evaluate": lambda argv: detector_args.evaluate_parser().parse_args(argv),
    "export": lambda argv: detector_args.export_parser().parse_args(argv),
    "predict": lambda argv: detector_args.predict_parser().parse_args(argv),
    "prepare": lambda argv: _prepare_parser().parse_args(argv),
    "data.make_shards": lambda argv: _make_shards_parser().parse_args(argv),
    "probe": probe_args.parse_args,
}
PARSERS = {
    "pretrain": pretrain_args.get_args_parser,
    "finetune": finetune_args.get_args_parser,
    "finetune_fas": finetune_args.get_fas_parser,
    "evaluate": detector_args.evaluate_parser,
    "export": detector_args.export_parser,
    "predict": detector_args.predict_parser,
    "prepare": _prepare_parser,
    "data.make_shards": _make_shards_parser,
    "probe": probe_args.get_args_parser,
}
FACES = ["faces", "--input", "in", "--out", "out"]
SHARDS = ["src", "--out", "out"]

# (verb, argv, what the one line must say besides the flag and the value)
BAD = [
    # case 5: the input size against the model's patch size, named as pretraining names it
    ("finetune", ["--input_size", "17"], "patch size 16"),
    ("finetune", ["--input_size", "0"], ">= 1"),
    ("finetune_fas", ["--input_size", "17"], "patch size 16"),
    ("pretrain", ["--input_size", "17"], "patch size 16"),
    # case 6
    ("finetune", ["--log_every", "0"], ">= 1"),
    ("probe", ["--knn_k", "0"], ">= 1"),
    ("probe", ["--knn_temperature", "inf"], "finite"),
    ("finetune_fas", ["--log_every", "0"], ">= 1"),
    # case 7
    ("finetune", ["--seed", "-1"], "in [0, 4294967295]"),
    ("pretrain", ["--seed", "-1"], "in [0, 4294967295]"),
    ("finetune", ["--seed", str(2**32)], "in [0, 4294967295]"),
    ("finetune_fas", ["--seeds", "-1"], "in [0, 4294967295]"),
    ("finetune_fas", ["--seeds", "0,-1"], "in [0, 4294967295]"),
    ("finetune_fas", ["--seeds", "0,0"], "distinct"),
    ("finetune_fas", ["--seeds", "a"], "whole number"),
    ("finetune_fas", ["--split_seed", "-1"], "in [0, 4294967295]"),
    ("finetune", ["--max_steps", "-1"], ">= 0"),
    ("pretrain", ["--max_steps", "-1"], ">= 0"),
    ("finetune_fas", ["--max_steps", "-1"], ">= 0"),
    # case 8: no non-finite number anywhere
    ("finetune", ["--blr", "inf"], "finite"),
    ("finetune", ["--lr", "nan"], "finite"),
    ("pretrain", ["--blr", "inf"], "finite"),
    ("pretrain", ["--min_lr=-inf"], "finite"),  # argparse reads a bare -inf as a flag
    ("finetune_fas", ["--lr", "inf"], "finite"),
    ("finetune_fas", ["--weight_decay", "nan"], "finite"),
    ("finetune", ["--warmup_epochs", "inf"], "finite"),
    ("finetune", ["--clip_grad", "inf"], "finite"),
    ("evaluate", ["--threshold", "nan"], "finite"),
    ("data.make_shards", [*SHARDS, "--shard_size_mb", "inf"], "finite"),
    # case 9
    ("finetune", ["--eval_every", "-1"], ">= 0"),
    ("finetune_fas", ["--eval_every", "0"], ">= 1"),
    ("finetune", ["--save_every", "-1"], ">= 0"),
    ("pretrain", ["--save_every", "-1"], ">= 0"),
    ("finetune", ["--clip_grad", "-1"], ">= 0"),
    ("pretrain", ["--clip_grad", "-1"], ">= 0"),
    ("finetune", ["--max_nonfinite", "0"], ">= 1"),
    ("finetune_fas", ["--max_nonfinite", "0"], ">= 1"),
    ("evaluate", ["--threshold", "7"], "in [0, 1]"),
    ("export", ["--threshold", "-0.1"], "in [0, 1]"),
    ("predict", ["--threshold", "1.5"], "in [0, 1]"),
    # the rest of the table: every kind of range, in every verb
    ("pretrain", ["--mask_ratio", "1"], "in (0, 1)"),
    ("pretrain", ["--t_momentum", "1.5"], "in [0, 1]"),
    ("pretrain", ["--epochs", "0"], ">= 1"),
    ("pretrain", ["--batch_size", "0"], ">= 1"),
    ("pretrain", ["--num_workers", "-1"], ">= 0"),
    ("pretrain", ["--accum_iter", "0"], ">= 1"),
    ("pretrain", ["--keep_last", "0"], ">= 1"),
    ("pretrain", ["--synthetic_images", "0"], ">= 1"),
    ("pretrain", ["--mask_strategy", "grid"], "invalid choice"),
    ("finetune", ["--smoothing", "1"], "in [0, 1)"),
    ("finetune", ["--reprob", "2"], "in [0, 1]"),
    ("finetune", ["--mixup_prob", "1.5"], "in [0, 1]"),
    ("finetune", ["--drop_path", "1"], "in [0, 1)"),
    ("finetune", ["--layer_decay", "0"], "in (0, 1]"),
    ("finetune", ["--temperature", "0"], "> 0"),
    ("finetune", ["--cutmix_minmax", "0", "2"], "in [0, 1]"),
    ("finetune", ["--eval_batch_size", "0"], ">= 1"),
    ("finetune", ["--epochs", "1.5"], "whole number"),
    ("finetune_fas", ["--val_fraction", "1"], "in [0, 1)"),
    ("finetune_fas", ["--iterations", "0"], ">= 1"),
    ("finetune_fas", ["--batch_per_group", "0"], ">= 1"),
    ("evaluate", ["--batch_size", "0"], ">= 1"),
    ("evaluate", ["--num_workers", "-1"], ">= 0"),
    ("predict", ["--sheet_max", "0"], ">= 1"),
    ("predict", ["--crop_scale", "0"], "> 0"),
    ("predict", ["--num_frames", "0"], ">= 1"),
    ("prepare", [*FACES, "--workers", "-1"], ">= 0"),
    ("prepare", [*FACES, "--num_shards", "0"], ">= 1"),
    ("prepare", [*FACES, "--size", "8"], "in [16, 4096]"),
    ("prepare", [*FACES, "--crop_scale", "nan"], "finite"),
    ("prepare", ["frames", "--input", "in", "--out", "out", "--num_frames", "0"], ">= 1"),
    ("prepare", ["finetune-set", "--input", "in", "--out", "out", "--val_fraction", "1.5"], "in [0, 1]"),
    ("prepare", ["finetune-set", "--input", "in", "--out", "out", "--seed", "-1"], "in [0, 4294967295]"),
    ("prepare", ["demo", "--videos", "0"], ">= 1"),
    ("data.make_shards", [*SHARDS, "--quality", "0"], "in [1, 100]"),
    ("data.make_shards", [*SHARDS, "--seed", "-1"], "in [0, 4294967295]"),
    ("data.make_shards", [*SHARDS, "--workers", "-1"], ">= 0"),
    # paths of the kind they must be, before any work
    ("finetune", ["--data_path", ".", "--mean_std", "missing.txt"], "no such file"),
    ("finetune", ["--train_split", "missing.txt"], "no such file"),
    ("finetune", ["--train_split", "."], "no such file"),  # a folder is not a split file
    ("finetune", ["--dataset_abs_path", "missing"], "no such folder"),
    ("finetune_fas", ["--mean_std", "missing.txt"], "no such file"),
    ("evaluate", ["--checkpoint", "missing.pth"], "no such file"),
    ("export", ["--checkpoint", "missing.pth"], "no such file or folder"),
    ("export", ["--mean_std", "missing.txt"], "no such file"),
]


def _refusal(verb: str, argv: list[str], capsys) -> tuple[int, str]:
    """What `python -m fsfm_fast.<verb> ARGV` ends with when its flags are refused: status and stderr."""
    try:
        code = cli.run(lambda a: PARSE[verb](a) and 0, f"fsfm_fast.{verb}", argv)
    except SystemExit as stop:  # argparse refused a value (a flag's type)
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("verb, argv, says", BAD, ids=[f"{v}:{' '.join(a[-2:])}" for v, a, _ in BAD])
def test_a_bad_value_is_one_line_naming_the_flag_and_the_value(verb, argv, says, capsys):
    code, err = _refusal(verb, argv, capsys)
    given = next(a for a in reversed(argv) if a.startswith("--"))
    flag, _, value = given.partition("=")
    value = value or argv[argv.index(given) + 1]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"fsfm_fast.{verb}") and flag in lines[0] and value in lines[0], lines[0]
    assert says in lines[0], lines[0]


@pytest.mark.parametrize("verb, argv", [
    ("pretrain", ["--seed", "0", "--max_steps", "0", "--save_every", "0", "--clip_grad", "0", "--input_size", "64"]),
    ("finetune", ["--eval_every", "0", "--save_every", "0", "--mixup", "0", "--cutmix_minmax", "0.2", "0.8"]),
    ("finetune", ["--model", "fsfm_vit_huge_patch14", "--input_size", "224"]),
    ("finetune_fas", ["--seeds", "3, 4", "--val_fraction", "0", "--input_size", "224"]),
    ("evaluate", ["--threshold", "0"]),
    ("evaluate", ["--threshold", "1"]),
    ("predict", ["--threshold", "0.5", "--num_workers", "0"]),
    ("prepare", [*FACES, "--workers", "0", "--crop_scale", "1"]),
    ("data.make_shards", [*SHARDS, "--quality", "100", "--samples_per_shard", "0"]),
])
def test_values_at_the_edges_of_their_ranges_are_accepted(verb, argv):
    PARSE[verb](argv)


def test_seeds_are_kept_as_given_and_split_by_the_verb():
    args = finetune_args.parse_fas_args(["--seeds", "3, 4"])
    assert args.seeds == "3, 4" and args.seed_list == [3, 4]
    assert finetune_args.parse_fas_args([]).seed_list == [0, 1, 2]  # the demo's three


def test_the_entry_point_refuses_before_importing_the_verb(tmp_path):
    # the real `python -m` path: the flag is refused, in one line, and nothing is written
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "fsfm_fast.finetune", "--log_every", "0", "--output_dir", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "fsfm_fast.finetune: error: argument --log_every: must be >= 1, got '0' (see fsfm_fast.finetune -h)"]
    assert not out.exists()


# ------------------------------------------------------------------------------------ -h without torch

HELP_CHECK = r"""
import json, runpy, sys
verbs = json.loads(sys.argv[1])
for verb, argv in verbs:
    sys.argv = ["x", *argv, "-h"]
    try:
        runpy.run_module("fsfm_fast." + verb, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        assert stop.code == 0, (verb, stop.code)
    else:
        raise AssertionError(verb + " -h did not exit")
heavy = sorted(m for m in ("torch", "timm", "dlib", "av", "cv2", "sklearn") if m in sys.modules)
print(json.dumps(heavy))
"""


def test_help_of_every_verb_imports_neither_torch_nor_timm(tmp_path):
    # one process for all of them: `-h` must be answered by the verbs' light entry modules
    verbs = [(v, []) for v in VERBS] + [("prepare", [c]) for c in
                                        ("frames", "faces", "parse", "pretrain-set", "finetune-set", "demo")]
    done = subprocess.run([sys.executable, "-c", HELP_CHECK, json.dumps(verbs)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# ------------------------------------------------------------------------------------ help text


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for verb, make in PARSERS.items():
        parser = make()
        out.append((verb, parser))
        for action in parser._actions:  # the subcommands of prepare
            if isinstance(action, argparse._SubParsersAction):
                out += [(f"{verb} {name}", sub) for name, sub in action.choices.items()]
    return out


def test_every_flag_of_every_verb_has_help():
    missing = [f"{verb} {action.option_strings or action.dest}" for verb, parser in _all_parsers()
               for action in parser._actions if not action.help]
    assert missing == []


def _flag_help(help_text: str, flag: str) -> str:
    """The help of ``flag`` in ``-h``'s text, joined into one line."""
    lines = help_text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith(flag + " ") or ln.strip() == flag
                 or ln.strip().startswith(flag + ","))
    block = [lines[start]]
    for ln in lines[start + 1:]:
        if ln.strip().startswith("-") or not ln.startswith("      "):
            break
        block.append(ln)
    return " ".join(" ".join(block).split())


def test_defaults_are_shown_once_and_only_when_there_is_one():
    for verb, parser in _all_parsers():
        text = parser.format_help()
        for empty in ("(default: )", "(default: None)", "(default: True)", "(default: False)", "(default: [])"):
            assert empty not in text, (verb, empty)
        for action in parser._actions:
            if action.option_strings and action.help:
                assert _flag_help(text, action.option_strings[0]).count("default") <= 1 + action.help.count("default"), \
                    (verb, action.option_strings)
    finetune = finetune_args.get_args_parser().format_help()
    assert "(default: " not in _flag_help(finetune, "--finetune")
    assert "(default: " not in _flag_help(finetune, "--global_pool") + _flag_help(finetune, "--cls_token")
    assert "(default: 224; demo: 112)" in _flag_help(finetune, "--input_size")


def test_seeds_help_says_what_the_demo_runs():
    seeds = _flag_help(finetune_args.get_fas_parser().format_help(), "--seeds")
    assert "default: 0,1,2,3,4" in seeds and "the demo runs 3 seeds" in seeds


def test_descriptions_keep_their_lines():
    text = finetune_args.get_fas_parser().format_help()
    assert "\n    python -m fsfm_fast.finetune_fas --finetune checkpoint-400.pth --model fsfm_vit_base_patch16 \\\n" in text
    assert "\n- honest: the checkpoint" in text  # a list item starts its own line
    assert "\nExamples:\n  python -m fsfm_fast.pretrain  " in pretrain_args.get_args_parser().format_help()


def test_help_formatter_shows_zero_but_not_an_absent_default():
    p = cli.argument_parser("x", None)
    p.add_argument("--zero", default=0, type=int, help="a count")
    p.add_argument("--none", default=None, help="optional")
    p.add_argument("--said", default=3, help="three (default: three)")
    p.add_argument("--switch", action="store_true", help="on or off")
    text = " ".join(p.format_help().split())
    assert "a count (default: 0)" in text and "optional --said" in text
    assert "three (default: three) --switch" in text and text.endswith("on or off")


def test_the_demo_domains_named_to_the_parser_are_the_benchmark_s():
    from fsfm_fast.data import spoof

    assert tuple(spoof.DOMAINS) == demo.SPOOF_DOMAINS and spoof.DEFAULT_TARGET == demo.SPOOF_TARGET


def test_typed_values_parse_to_numbers():
    assert flags.positive("3") == 3 and flags.number(0, 1)("0.25") == 0.25 and flags.seed("4294967295") == 2**32 - 1
    with pytest.raises(argparse.ArgumentTypeError, match="must be a finite number, got 'nan'"):
        flags.non_negative("nan")


def test_the_parsers_precisions_are_the_ones_devices_knows():
    # the parsers list --precision's names without importing torch; devices maps them to autocast dtypes
    from fsfm_fast.runtime.devices import AUTOCAST_DTYPES

    assert set(flags.PRECISIONS) == {"auto", *AUTOCAST_DTYPES}
