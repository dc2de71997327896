#!/usr/bin/env bash
# The README's run command: set up everything, then open napari with the
# plugin's widgets docked and a bundled sample converted to an APR.
# Without a display the same steps run under Xvfb and write screenshots.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
if [ -n "${DISPLAY:-}" ]; then
    exec .venv/bin/python scripts/run_napari.py "$@"
fi
out="$ROOT/out/run"
echo "run: no display found; running under Xvfb and writing screenshots to $out" >&2
exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/run_napari.py --screenshot-dir "$out" "$@"
