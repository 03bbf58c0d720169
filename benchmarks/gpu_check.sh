#!/usr/bin/env bash
# The GPU check, from a bare working tree: no install, no .git, no network needed.
#
#   bash benchmarks/gpu_check.sh --out DIR [--dry-run] [--commit SHA] [--stages a,b]
#
# Stages, timeouts and the record: benchmarks/gpu_check.py (--help). PYTHON=... picks the
# interpreter. Exit status 0 only when every stage passed; 2 without a GPU (and no --dry-run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
