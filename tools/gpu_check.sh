#!/usr/bin/env bash
# One prepared GPU check: installs carried wheels (.whl/), runs the GPU tests, times every target
# row of docs/benchmarks.md and saves the operator profile of the sliding bfloat16 run, all under
# one output folder ($OUT, else --output DIR, else gpu_check_output/).
#   bash tools/gpu_check.sh                          # on the GPU machine (at most ~7 min on one H200)
#   bash tools/gpu_check.sh --dry-run --output tmp   # on a CPU, configs/tiny.yaml, tiny sizes, seconds
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
DIR="${OUT:-gpu_check_output}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --output) [ $# -ge 2 ] || { echo "--output needs a folder" >&2; exit 2; }; DIR="$2"; shift 2 ;;
    *) echo "unknown argument '$1': use --dry-run and/or --output DIR" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
mkdir -p "$DIR"
if [ "$DRY" = 0 ]; then
  [ -d .whl ] || { echo "no .whl/ folder: run 'bash tools/gpu_wheels.sh' and carry .whl" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
ARGS=(--output "$DIR")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)
exec "$PY" tools/gpu_check.py "${ARGS[@]}"
