#!/usr/bin/env bash
# Verify fsfm_fast on a GPU machine in one prepared call (about 15 device-minutes are lent at a time,
# the machine's start included, so everything only a GPU can show runs here, in under 8 minutes):
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--budget SECONDS] [OUT_DIR]
#
# Steps run in order, each bounded by its own timeout and by what is left of --budget (default 450 s);
# each ends in one line: PASS, FAIL, or NOT RUN with the reason. Logs and JSON go to OUT_DIR (default
# $OUT when set, else gpu_check_out/), and the last step prints a Markdown section for
# benchmarks/RESULTS.md (also written to OUT_DIR/results.md). Exit status: 1 when a step failed.
#
# --dry-run runs on a CPU: each tool a step needs is looked up and its flags parsed (pip, pytest's
# collection, compute-sanitizer when installed), the self-check runs on the CPU, and the benchmarks
# run their --quick modes, which pick tiny shapes without a GPU. CI runs it (tests/test_gpu_check.py)
# so this script cannot rot while no GPU is at hand. A dry run has no time limits unless --budget is
# given: the timeouts are sized for a GPU, and a busy CPU is not a failure.
#
# The interpreter: $PYTHON when set, else the repository's .venv/bin/python, else python3 or python
# from PATH, the first that imports torch; none that does is a one-line error (exit 2).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
BUDGET=
OUT_DIR="${OUT:-gpu_check_out}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) BUDGET="${2:-}"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
    *) OUT_DIR="$1" ;;
  esac
  shift
done
if [ -z "$BUDGET" ] && [ "$DRY" = 0 ]; then BUDGET=450; fi
if [ -n "$BUDGET" ] && ! [[ "$BUDGET" =~ ^[0-9]+$ ]]; then
  echo "gpu_check.sh: --budget takes whole seconds, got '$BUDGET'" >&2; exit 2
fi

# find_python: the interpreter fsfm_fast was installed with. Without one that imports torch, every step
# after the first would fail with "No module named torch", so that is said once, here.
imports_torch() { "$1" -c "import torch" > /dev/null 2>&1; }
find_python() {
  if [ -n "${PYTHON:-}" ]; then
    local why
    why="$("$PYTHON" -c "import torch" 2>&1 | tail -n 1)" && { echo "$PYTHON"; return; }
    echo "gpu_check.sh: PYTHON=$PYTHON cannot import torch (${why:-not runnable}); set PYTHON to the interpreter fsfm_fast is installed in" >&2
    return 1
  fi
  local candidate
  for candidate in "$PWD/.venv/bin/python" "$(command -v python3)" "$(command -v python)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && imports_torch "$candidate"; then echo "$candidate"; return; fi
  done
  echo "gpu_check.sh: no interpreter here imports torch (tried .venv/bin/python, python3, python); set PYTHON to the one fsfm_fast is installed in" >&2
  return 1
}
PY="$(find_python)" || exit 2
echo "gpu_check: $PY, torch $("$PY" -c "import torch; print(torch.__version__)")"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
SUMMARY="$OUT_DIR/summary.tsv"
printf 'step\tstatus\tseconds\tnote\tcommand\n' > "$SUMMARY"
START=$(date +%s)
NOT_RUN=75  # a step's command exits with this, its reason as the last line, when it cannot run here
FAILED=0

# step NAME TIMEOUT COMMAND...: run COMMAND with its output in OUT_DIR/NAME.log, record one line.
# A dry run gives the command no time limit (TIMEOUT is a GPU's), and skips steps only for an explicit --budget.
step() {
  local name="$1" limit="$2"
  shift 2
  local cmd="$*"
  if [ -n "$BUDGET" ]; then
    local left=$(( BUDGET - ($(date +%s) - START) ))
    if [ "$left" -lt 15 ]; then
      record "$name" "NOT RUN" 0 "out of time: ${left} s of the ${BUDGET} s budget left" "$cmd"
      return
    fi
    [ "$limit" -gt "$left" ] && limit="$left"
  fi
  local t0=$(date +%s)
  local bounded=(timeout --kill-after=10 "$limit")
  [ "$DRY" = 1 ] && bounded=()
  ${bounded[@]+"${bounded[@]}"} bash -o pipefail -c '"$@"' "$name" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$? seconds=$(( $(date +%s) - t0 ))
  local last
  last="$(tail -n 1 "$OUT_DIR/$name.log" | tr '\t' ' ' | cut -c1-200)"
  if [ "$rc" -eq 0 ]; then
    record "$name" PASS "$seconds" "" "$cmd"
  elif [ "$rc" -eq "$NOT_RUN" ]; then
    record "$name" "NOT RUN" "$seconds" "$last" "$cmd"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    FAILED=1
    record "$name" FAIL "$seconds" "timed out after ${limit} s" "$cmd"
  else
    FAILED=1
    record "$name" FAIL "$seconds" "exit $rc: $last" "$cmd"
  fi
}

record() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$SUMMARY"
  printf '%-16s %-8s %4ss  %s\n' "$1" "$2" "$3" "$4"
}

# --------------------------------------------------------------------------------- step commands

environment() {  # the machine; torch, CUDA and Triton versions go to selfcheck.json
  uname -a && echo "$(nproc) CPUs" && df -h . | tail -n 1
  if command -v nvidia-smi > /dev/null; then nvidia-smi; else echo "no nvidia-smi here"; fi
}

build_extension() {  # _C in place, for the present GPU's architecture only
  if [ "$DRY" = 1 ]; then
    "$PY" -m pip install --help > /dev/null && [ -f setup.py ] && echo "pip and setup.py are there"
    return
  fi
  local arch
  arch="$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")" || return 1
  echo "building for TORCH_CUDA_ARCH_LIST=$arch"
  TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" "$PY" -m pip install --no-build-isolation --no-deps -e . \
    && "$PY" -c "from fsfm_fast import _ext; assert _ext.cuda_built(), _ext.unavailable_reason(); print('_C has CUDA kernels')"
}

cuda_tests() {
  if [ "$DRY" = 1 ]; then  # the flags; the suite itself collects every test module
    "$PY" -m pytest -m cuda -q -p no:cacheprovider --collect-only tests/test_extension.py | tail -n 1
    return
  fi
  "$PY" -m pytest -m cuda -q -p no:cacheprovider tests
}

# The compiled CUDA kernels' tests under compute-sanitizer: the CPU replay runs threads one after
# another, so only racecheck can find a missing barrier in the shared-memory kernel.
SANITIZED_TESTS="tests/test_crfrp_kernels.py tests/test_extension.py"
sanitizer() {
  local tool="$1"
  if ! command -v compute-sanitizer > /dev/null; then
    echo "compute-sanitizer is not installed here"
    return "$NOT_RUN"
  fi
  if [ "$DRY" = 1 ]; then
    compute-sanitizer --tool "$tool" --help > /dev/null && echo "compute-sanitizer takes --tool $tool"
    return
  fi
  compute-sanitizer --tool "$tool" --error-exitcode 1 --target-processes all \
    "$PY" -m pytest -m cuda -q -x -p no:cacheprovider $SANITIZED_TESTS
  local rc=$?
  if [ "$rc" -ne 0 ] && grep -q "Device not supported" "$OUT_DIR/$tool.log"; then
    echo "compute-sanitizer refuses this GPU (Device not supported: gVisor machines such as the H200)"
    return "$NOT_RUN"
  fi
  return "$rc"
}

results() {
  "$PY" benchmarks/gpu_results.py "$OUT_DIR" > "$OUT_DIR/results.md" && cat "$OUT_DIR/results.md"
}

export DRY PY OUT_DIR NOT_RUN SANITIZED_TESTS
export -f environment build_extension cuda_tests sanitizer results

# --------------------------------------------------------------------------------- the steps, in order
# One line per step: name, timeout in seconds, command. The timeouts of a real run add up to about the
# budget; a step that would start with too little of it left is reported NOT RUN.
step environment    30 environment
step build         240 build_extension
step selfcheck      60 "$PY" -m fsfm_fast.ops.selfcheck --json "$OUT_DIR/selfcheck.json"
step cuda_tests    120 cuda_tests
step memcheck       90 sanitizer memcheck
step racecheck      90 sanitizer racecheck
step bench_crfrp    45 "$PY" benchmarks/bench_crfrp_mask.py --quick --json "$OUT_DIR/bench_crfrp_mask.json"
step bench_ops      60 "$PY" benchmarks/bench_ops.py --quick --json "$OUT_DIR/bench_ops.json"
step bench_step     90 "$PY" benchmarks/bench_step.py --quick --json "$OUT_DIR/bench_step.json"
step bench_data     60 "$PY" benchmarks/bench_data.py --quick --work "$OUT_DIR/bench_data_work" --json "$OUT_DIR/bench_data.json"
step bench_prepare  60 "$PY" benchmarks/bench_prepare.py --quick --json "$OUT_DIR/bench_prepare.json"
step bench_finetune 60 "$PY" benchmarks/bench_finetune.py --quick --json "$OUT_DIR/bench_finetune.json"
# The other verbs' quick benchmarks go here, one `step` line each, before the results;
# gpu_results.py puts every bench_*.json it finds in OUT_DIR into the table.
[ -n "$BUDGET" ] && BUDGET=$(( BUDGET + 15 ))  # the table is always made, whatever is left
step results        15 results

echo "gpu_check: $(( $(date +%s) - START )) s; summary in $SUMMARY"
exit "$FAILED"
