"""The Markdown section for benchmarks/RESULTS.md from a gpu_check.sh output folder.

    python benchmarks/gpu_results.py OUT_DIR

Reads OUT_DIR/summary.tsv (each step's status and command), selfcheck.json (device, torch, CUDA,
Triton versions, and which kernels passed) and every bench_*.json (each benchmark's rows), and prints one section: the steps, then one
table per benchmark with the exact command that produced it. A benchmark added to gpu_check.sh that
writes ``{"rows": [...]}`` or ``{"results": [...]}`` JSON shows up without changes here.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from datetime import date
from pathlib import Path

MAX_COLUMNS = 9


def _cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _table(rows: list[dict]) -> list[str]:
    columns = [k for k in rows[0] if not isinstance(rows[0][k], (dict, list))][:MAX_COLUMNS]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return lines


def section(out_dir: Path) -> str:
    steps = list(csv.DictReader((out_dir / "summary.tsv").open(encoding="utf-8"), delimiter="\t"))
    commands = {s["step"]: s["command"] for s in steps}
    try:
        selfcheck = json.loads((out_dir / "selfcheck.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # the self-check step failed: the table says "?"
        selfcheck = {}
    versions = selfcheck.get("versions", {})
    gpu = versions.get("gpu")
    lines = [f"## GPU check, {gpu or 'no GPU (dry run on the CPU: no figure below is a GPU measurement)'}", "",
             f"{date.today().isoformat()}: {gpu or 'CPU'}, Python {versions.get('python', '?')}, torch "
             f"{versions.get('torch', '?')} (CUDA {versions.get('cuda', '?')}), Triton {versions.get('triton', '?')}, "
             f"fsfm_fast._C with CUDA kernels: {'yes' if versions.get('extension_cuda') else 'no'}. "
             "Produced by `bash benchmarks/gpu_check.sh` (each benchmark's command is given below it).", "",
             "| step | status | seconds | note |", "|---|---|---:|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['note']} |" for s in steps]
    if selfcheck.get("checks"):
        lines += ["", "Self-check of each kernel against the reference: " + "; ".join(
            f"{c['op']} ({c['impl']}) {'ok' if c['ok'] else 'FAILED'}, {c['detail']}" for c in selfcheck["checks"]) + "."]
    for path in sorted(out_dir.glob("bench_*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data.get("rows") or data.get("results") or []
        step = next((name for name, cmd in commands.items() if path.name in cmd), None)
        lines += ["", f"### {path.stem}", ""]
        if step:
            lines += [f"    {commands[step]}".replace(str(out_dir) + "/", ""), ""]
        lines += _table(rows) if rows else ["(no rows)"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not (Path(argv[0]) / "summary.tsv").is_file():
        print("usage: python benchmarks/gpu_results.py OUT_DIR (a gpu_check.sh output folder)", file=sys.stderr)
        return 2
    print(section(Path(argv[0])), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
