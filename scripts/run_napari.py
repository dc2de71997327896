"""Open napari with the APRNet widgets docked and a bundled sample converted to an APR.

Usage::

    python scripts/run_napari.py [--sample blobs_3d|photo|shapes] [--screenshot-dir DIR]

With ``--screenshot-dir`` the same steps run, a screenshot of the window is
written to ``DIR/run_napari.png`` and napari exits. Without a display
(no ``DISPLAY``), the script re-runs itself under ``xvfb-run`` with
``--screenshot-dir`` (default ``napari-aprnet-screens``), since a window
cannot be shown.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PLUGIN = "napari-aprnet"
WIDGETS = ("Convert to APR", "Tune E", "Classify", "Segment", "Train", "Annotate")
SAMPLE_LAYERS = {"blobs_3d": "blobs 3D", "photo": "camera", "shapes": "shapes"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", choices=sorted(SAMPLE_LAYERS), default="blobs_3d",
                        help="bundled sample to open and convert (default blobs_3d)")
    parser.add_argument("--rel-error", type=float, default=0.1, help="E used for the conversion (default 0.1)")
    parser.add_argument("--manual-thresholds", action="store_true",
                        help="convert with sigma_th = grad_th = 0 instead of automatic thresholds "
                             "(noisy images then stay near full resolution)")
    parser.add_argument("--screenshot-dir", type=Path, default=None,
                        help="write DIR/run_napari.png after converting, then exit")
    return parser.parse_args(argv)


def _rerun_under_xvfb(args: argparse.Namespace) -> int:
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        print("run_napari: no display (DISPLAY is unset) and xvfb-run is not installed; install Xvfb "
              "(apt-get install xvfb) or run on a desktop", file=sys.stderr)
        return 2
    out = args.screenshot_dir or Path("napari-aprnet-screens")
    print(f"run_napari: no display; running under Xvfb and writing a screenshot to {out}/", file=sys.stderr)
    cmd = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, os.path.abspath(__file__),
           "--sample", args.sample, "--rel-error", str(args.rel_error), "--screenshot-dir", str(out)]
    if args.manual_thresholds:
        cmd.append("--manual-thresholds")
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and sys.platform.startswith("linux"):
        return _rerun_under_xvfb(args)

    if args.screenshot_dir is not None:
        os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")  # no toasts in the shot
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-aprnet")
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample(PLUGIN, args.sample)
    layer = viewer.layers[SAMPLE_LAYERS[args.sample]]
    # the shapes sample is six 2D images along a "class" axis: Convert presets "2D planes" and converts each
    widgets = {}
    for name in reversed(WIDGETS):  # tabified; the first one ends up in front
        widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)[1]
    convert = widgets["Convert to APR"]
    convert.image.value = layer
    convert.params.rel_error.value = args.rel_error
    convert.params.fields["auto_parameters"].value = not args.manual_thresholds
    convert.convert()
    if args.screenshot_dir is None:
        napari.run()
        return 0
    deadline = time.monotonic() + 300
    while convert.task.running and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    ok = convert.result is not None
    viewer.reset_view()
    for _ in range(25):  # let the dock lay out the new texts before the shot
        QApplication.processEvents()
        time.sleep(0.02)
    args.screenshot_dir.mkdir(parents=True, exist_ok=True)
    path = args.screenshot_dir / "run_napari.png"
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"run_napari: {'converted' if ok else 'conversion FAILED for'} {layer.name!r}: {convert.results.value}")
    print(f"run_napari: wrote {path}")
    viewer.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
