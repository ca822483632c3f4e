"""benchmarks/gpu_check.sh --dry-run on the CPU: every step's tool is there and takes its flags, and
every benchmark's --quick mode runs, so the one-call GPU verification cannot rot without a GPU."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ["environment", "build", "selfcheck", "cuda_tests", "memcheck", "racecheck", "bench_crfrp", "bench_ops",
         "bench_step", "bench_data", "bench_prepare", "bench_finetune", "results"]


@pytest.mark.skipif(sys.platform != "linux", reason="the GPU machines run Linux (bash, timeout)")
def test_dry_run_passes_every_step(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # the dry run has no time limits of its own (a busy CI machine is not a failure); this one only
    # guards against a hang
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout + run.stderr
    steps = list(csv.DictReader((out / "summary.tsv").open(), delimiter="\t"))
    assert [s["step"] for s in steps] == STEPS
    for s in steps:
        if s["step"] in ("memcheck", "racecheck") and s["status"] == "NOT RUN":
            assert "compute-sanitizer is not installed" in s["note"]  # absent here, present on the GPU machines
        else:
            assert s["status"] == "PASS", (s, (out / f"{s['step']}.log").read_text()[-3000:])
    for name in ("selfcheck.json", "bench_crfrp_mask.json", "bench_ops.json", "bench_step.json", "bench_data.json"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "results.md").read_text()
    assert table.startswith("## GPU check, no GPU (dry run on the CPU")
    for heading in ("### bench_crfrp_mask", "### bench_ops", "### bench_step", "### bench_data"):
        assert heading in table
    assert "| bench_step | PASS |" in table and "benchmarks/bench_step.py --quick" in table
    assert "Self-check of each kernel against the reference: crfrp_mask (cpu) ok" in table


def test_steps_past_the_budget_are_reported_not_run(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--budget", "5", str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    steps = {s["step"]: s for s in csv.DictReader((out / "summary.tsv").open(), delimiter="\t")}
    assert all(steps[name]["status"] == "NOT RUN" and "out of time" in steps[name]["note"] for name in STEPS[:-1])
    assert steps["results"]["status"] == "PASS" and (out / "results.md").is_file()  # the table is always made


def _fake_python(folder: Path, name: str, imports_torch: bool) -> Path:
    """An executable called ``name``: this test's interpreter, or one in which torch is missing."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    if imports_torch:
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    else:
        path.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    path.chmod(0o755)
    return path


def _check(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--budget", "5",
                           str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(sys.platform != "linux", reason="the GPU machines run Linux (bash, timeout)")
def test_a_python_without_torch_is_a_one_line_error(tmp_path):
    bare = _fake_python(tmp_path / "bin", "python", imports_torch=False)
    run = _check(tmp_path, {**os.environ, "PYTHON": str(bare)})
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stdout + run.stderr
    assert f"PYTHON={bare} cannot import torch (ModuleNotFoundError" in run.stderr
    assert not (tmp_path / "out").exists()  # said before any step


@pytest.mark.skipif(sys.platform != "linux", reason="the GPU machines run Linux (bash, timeout)")
def test_without_PYTHON_an_interpreter_with_torch_is_found(tmp_path):
    """`python` on PATH lacks torch (the venv is not active): the script does not use it."""
    bin_dir = tmp_path / "bin"
    _fake_python(bin_dir, "python", imports_torch=False)
    good = _fake_python(bin_dir, "python3", imports_torch=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    run = _check(tmp_path, env)
    assert run.returncode == 0, run.stdout + run.stderr
    chosen = run.stdout.splitlines()[0]
    venv = REPO / ".venv" / "bin" / "python"  # the repository's own environment comes first where there is one
    assert chosen.startswith(f"gpu_check: {venv if venv.is_file() else good}, torch "), chosen


@pytest.mark.skipif(sys.platform != "linux", reason="the GPU machines run Linux (bash, timeout)")
@pytest.mark.skipif((REPO / ".venv" / "bin" / "python").is_file(), reason="the repository's .venv would be found")
def test_no_interpreter_with_torch_is_a_one_line_error(tmp_path):
    bin_dir = tmp_path / "bin"
    for name in ("python", "python3"):
        _fake_python(bin_dir, name, imports_torch=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    run = _check(tmp_path, env)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stdout + run.stderr
    assert "no interpreter here imports torch" in run.stderr and "set PYTHON" in run.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the GPU machines run Linux (bash, timeout)")
def test_a_dry_run_puts_no_time_limit_on_its_steps(tmp_path):
    """The step timeouts are sized for a GPU; on a busy CPU they would fail steps that are only slow, so a
    dry run does not run its steps under `timeout` at all (a `timeout` here records its use and fails)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "timeout_used"
    (bin_dir / "timeout").write_text(f'#!/bin/sh\necho "$@" >> "{marker}"\nexit 1\n')
    (bin_dir / "timeout").chmod(0o755)
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    # the budget lets the first step start and stops the rest, so that this test stays short
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--budget", "16",
                          str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    steps = {s["step"]: s for s in csv.DictReader((tmp_path / "out" / "summary.tsv").open(), delimiter="\t")}
    assert steps["environment"]["status"] == "PASS", steps["environment"]
    assert not marker.exists(), marker.read_text()
