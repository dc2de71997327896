#!/usr/bin/env bash
# Runs every benchmark in turn (2 threads) and rewrites benchmarks/results/*.md.
# Installs the benchmark-only peers (pyapr 1.0.7, matplotlib) into .venv first.
# Takes about 30 minutes on a 2-core machine; run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/setup_env.sh
.venv/bin/python -m pip install -q -e ".[bench]" --no-build-isolation
export OMP_NUM_THREADS=2
PY=.venv/bin/python
$PY benchmarks/bench_convert.py
$PY benchmarks/bench_reconstruct.py
$PY benchmarks/bench_layers.py
$PY benchmarks/bench_train_step.py --steps 9
$PY benchmarks/bench_train_step.py --steps 9 --tune-malloc
$PY benchmarks/bench_training.py --size 256 --batch 36 --steps 200 --curve-steps 200 --window 50
