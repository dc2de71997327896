#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: Xvfb libraries (apt-get),
# a virtual environment in .venv, torch pinned to the CPU build, napari with
# PyQt5, and this package (editable, which compiles native/*.c).
# Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

APT_PACKAGES="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-randr0 libxcb-render-util0 \
libxcb-image0 libxcb-shape0 libxcb-xfixes0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 libdbus-1-3 libfontconfig1"

missing=""
for p in $APT_PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing system packages:$missing" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.aprnet-setup-stamp
want="$(cat pyproject.toml setup.py native/build_ffi.py | sha1sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing Python packages into .venv (first run takes a few minutes)" >&2
    $VPY -m pip install -q --upgrade pip setuptools wheel cffi
    # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
    $VPY -m pip install -q "torch==2.13.0"
    $VPY -m pip install -q "napari[pyqt5]" magicgui
    $VPY -m pip install -q -e ".[napari,test]" --no-build-isolation
    echo "$want" > "$stamp"
else
    # sources may have changed: rebuild the C extension (a few seconds);
    # the build log is shown only if the build fails
    log="$(mktemp)"
    if ! $VPY -m pip install -q -e . --no-build-isolation --no-deps >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"; exit 1
    fi
    rm -f "$log"
fi
