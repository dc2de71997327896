#!/usr/bin/env bash
# Runs every benchmark in turn (2 threads) and rewrites benchmarks/results/*.md.
# Installs the benchmark-only peers (pyapr 1.0.7, matplotlib) into .venv first.
# The speed benchmarks take about 30 minutes on a 2-core machine, the learning runs
# several hours; run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/setup_env.sh
.venv/bin/python -m pip install -q -e ".[bench]" --no-build-isolation
export OMP_NUM_THREADS=2
PY=.venv/bin/python
$PY benchmarks/bench_convert.py
$PY benchmarks/bench_reconstruct.py
$PY benchmarks/bench_layers.py
$PY benchmarks/bench_lazy_view.py
OMP_NUM_THREADS=1 $PY benchmarks/bench_blockwise.py   # prints the rows of results/blockwise.md (1 thread)
xvfb-run -a -s "-screen 0 1600x1000x24" $PY benchmarks/bench_gui_freeze.py --markdown benchmarks/results/gui_freeze.md
$PY benchmarks/bench_train_step.py --steps 9
$PY benchmarks/bench_train_step.py --steps 9 --tune-malloc
$PY benchmarks/bench_distributed.py --threads 2 --nproc 2
$PY benchmarks/bench_shapes_apr.py
# learning runs are long (hours on 2 cores) and resumable: see benchmarks/results/training.md
$PY benchmarks/bench_learning_diagnosis.py --steps 800
$PY benchmarks/bench_training.py table --steps 3000 --other-steps 1500 --pix256-steps 600
$PY benchmarks/bench_training.py curves --steps 1000 --pix256-steps 600
$PY benchmarks/bench_training.py finite --size 128 --steps 600
$PY benchmarks/bench_training.py report
# segmentation: APR_UNet vs Pix_UNet (resumable runs under out/; hours on 2 cores)
$PY benchmarks/bench_segmentation.py --steps 300
