#!/usr/bin/env bash
# GPU check (a few minutes on a machine with an NVIDIA GPU): installs what is missing, runs the CUDA
# tests (tests/test_cuda.py: layers equal their CPU results, gradcheck in float64, the thesis networks
# train on the GPU) and the layer and training-step benchmarks on the GPU against cuDNN, writing
# benchmarks/results/layers_cuda.md and train_step_cuda.md (and copies of them and the logs to $OUT
# when OUT is set).
#
# Usage: scripts/gpu_check.sh [--quick]
#   PYTHON       a python3 whose torch sees the GPU (default: python3 if it does, else a CUDA torch wheel
#                is installed into .venv-gpu from TORCH_INDEX)
#   TORCH_INDEX  wheel index of CUDA torch builds (default https://download.pytorch.org/whl/cu126)
#   WHEELS       a folder of wheels for machines without internet (what the script says is missing, e.g.
#                cffi, pycparser, hdf5plugin): on a connected machine, for the GPU machine's Python
#                (here 3.12): `pip download --no-deps --only-binary=:all: --python-version 3.12
#                --platform manylinux2014_x86_64 -d WHEELS cffi pycparser hdf5plugin`
# Without a Python whose torch sees the GPU it makes .venv-gpu with a CUDA torch wheel (needs internet).
# The other needs go to .gpu-deps/ (pip --target) and the C library is compiled in place.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=""
STEPS=7
if [ "${1:-}" = "--quick" ]; then QUICK=1; STEPS=3; fi
LOGS="$(mktemp -d)"
RESULTS="$ROOT/benchmarks/results"

step() { echo; echo "=== $* ($(date +%T))"; }

step "GPU"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L; then
    echo "gpu_check: no NVIDIA GPU found (nvidia-smi); run this on a machine with one" >&2
    exit 2
fi

step "Python with CUDA torch"
has_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
PY="${PYTHON:-python3}"
if ! has_cuda "$PY"; then
    [ -x .venv-gpu/bin/python ] || python3 -m venv .venv-gpu
    PY=.venv-gpu/bin/python
    if ! has_cuda "$PY"; then
        "$PY" -m pip install -q "torch" --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cu126}"
        "$PY" -m pip install -q numpy cffi pycparser h5py hdf5plugin tifffile imageio pytest setuptools
    fi
fi
has_cuda "$PY" || { echo "gpu_check: $PY has no torch that sees the GPU" >&2; exit 2; }
# this package's other needs go to a folder of their own, next to the CUDA torch (never replacing it);
# the C library is compiled in place (python native/build_ffi.py)
DEPS="$ROOT/.gpu-deps"
export PYTHONPATH="$ROOT:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
PIP_SOURCE=()
[ -n "${WHEELS:-}" ] && PIP_SOURCE=(--no-index --find-links "$WHEELS")
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"cffi": "cffi", "pycparser": "pycparser", "numpy": "numpy", "h5py": "h5py", "hdf5plugin": "hdf5plugin",
        "tifffile": "tifffile", "imageio": "imageio", "pytest": "pytest", "setuptools": "setuptools"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "installing into $DEPS: $missing"
    "$PY" -m pip install -q --target "$DEPS" "${PIP_SOURCE[@]}" $missing
fi
"$PY" native/build_ffi.py >"$LOGS/build.log" 2>&1 || { cat "$LOGS/build.log" >&2; exit 1; }
"$PY" - <<'EOF'
import torch, napari_aprnet
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"{torch.cuda.get_device_name(0)}; napari_aprnet {napari_aprnet.__version__}")
EOF

status=0
step "CUDA tests"
"$PY" -m pytest -q -rs -p no:xvfb -p no:cacheprovider -m "not gui" tests/test_cuda.py \
    "tests/test_nn_conv.py::test_cuda_matches_cpu" 2>&1 | tee "$LOGS/tests.log" || status=1

THREADS=$(nproc)
step "layers: APR on the GPU vs cuDNN"
"$PY" benchmarks/bench_layers.py --device cuda --threads "$THREADS" ${QUICK:+--quick} \
    2>&1 | tee "$LOGS/bench_layers.log" || status=1
step "training step: APR_B vs Pix_B on the GPU (plans, conversion and GPU compute apart)"
"$PY" benchmarks/bench_train_step.py --device cuda --threads "$THREADS" --steps "$STEPS" \
    2>&1 | tee "$LOGS/bench_train_step.log" || status=1

if [ -n "${OUT:-}" ]; then
    cp "$LOGS"/*.log "$OUT"/ 2>/dev/null || true
    cp "$RESULTS/layers_cuda.md" "$RESULTS/train_step_cuda.md" "$OUT"/ 2>/dev/null || true
fi
step "done: status $status; tables in $RESULTS/layers_cuda.md and train_step_cuda.md, logs in $LOGS"
exit $status
