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
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
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
