#!/usr/bin/env bash
# The README's test command: set up everything, then run the test suite
# (GUI tests run under Xvfb, started by pytest-xvfb).
# APRNET_SANITIZE=address scripts/test.sh builds the C library with
# AddressSanitizer and runs the non-GUI tests with it preloaded; with CI set,
# scripts/test.sh runs that pass after the normal one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
if [ "${APRNET_SANITIZE:-}" = "address" ]; then
    rebuild() { rm -rf build napari_aprnet/_aprnet_cffi*; .venv/bin/python -m pip install -q -e . --no-build-isolation --no-deps; }
    APRNET_SANITIZE=address rebuild
    trap 'APRNET_SANITIZE= rebuild' EXIT
    # libstdc++ is preloaded too: C++ exceptions thrown by other extensions
    # (matplotlib, Qt) trip ASan otherwise.
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)" \
        ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
        .venv/bin/python -m pytest -q -m "not gui" -p no:xvfb "$@"
else
    .venv/bin/python -m ruff check .
    .venv/bin/python -m pytest -q "$@"
    # in CI (CI set, as by most CI services) the AddressSanitizer pass follows:
    # about 2.5 minutes on one core, rebuilds included
    if [ -n "${CI:-}" ]; then APRNET_SANITIZE=address "$ROOT/scripts/test.sh" "$@"; fi
fi
