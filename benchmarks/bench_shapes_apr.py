"""How the APR adapts to the synthetic shapes (thesis 4.1.2, Figure 4.2 A-B), ours beside pyapr.

For every image of a fixed set of streaming shapes (default distribution,
256x256) and every relative error threshold E in 0.1, 0.2, ..., 1.0, the
APR is formed and reconstructed (piecewise constant), and three numbers are
kept: the computational ratio CR = pixels / particles, the mean absolute
reconstruction error, and whether the reconstruction is exact (largest error
under 1e-3 of the image's contrast). Configurations, all with the thesis'
"default values" of the other parameters (LibAPR's: lambda 3, psf 2, Ip_th,
sigma_th and grad_th 0) unless named:

- ``ours``: ``APR.from_image`` with the package defaults (what training uses);
- ``ours, lambda 0``: the same without the smoothing spline;
- ``pyapr``: pyapr 1.0.7 with its defaults (same values as ours);
- ``pyapr, auto``: pyapr with its automatic ``sigma_th`` / ``grad_th``.

pyapr (LibAPR's Python wrapper) is not a dependency: install it to get its
rows (``.venv/bin/pip install pyapr==1.0.7``); without it they are left out.

Usage::

    .venv/bin/python benchmarks/bench_shapes_apr.py [--images 1000]

Writes ``benchmarks/results/shapes_apr.md`` and ``shapes_apr.png``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
from functools import partial
from pathlib import Path

import numpy as np

from napari_aprnet.apr import APR
from napari_aprnet.data.shapes import ShapeStream
from napari_aprnet.params import APRParameters

RESULTS = Path(__file__).parent / "results"
E_VALUES = tuple(round(0.1 * k, 1) for k in range(1, 11))
#: thesis 4.1.2 / Figure 4.2, read from the text: "values of E around 0.2 or lower produce lossless APRs in
#: most cases"; "the computational ratio ... is on average slightly above 50 for these settings"
THESIS = "CR slightly above 50 on average for E <= 0.2, lossless in most cases; pixel detail lost around E = 0.5"


def _ours(image: np.ndarray, rel_error: float, **params) -> tuple[int, np.ndarray]:
    apr = APR.from_image(image, rel_error=rel_error, params=APRParameters(rel_error=rel_error, **params))
    return apr.n_particles, apr.reconstruct()


@contextlib.contextmanager
def _silenced_output():
    """Send file descriptors 1 and 2 (where C++ code prints) to /dev/null for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    sink = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(sink)


def _pyapr(image: np.ndarray, rel_error: float, auto: bool) -> tuple[int, np.ndarray]:
    import pyapr

    pp = pyapr.APRParameters()
    pp.rel_error, pp.auto_parameters = rel_error, auto
    with _silenced_output():  # LibAPR prints a warning about sigma_th = 0 for every image
        apr, parts = pyapr.converter.get_apr(image, converter=pyapr.converter.FloatConverter(), params=pp)
    rec = np.asarray(pyapr.reconstruction.reconstruct_constant(apr, parts), np.float32).reshape(image.shape)
    return apr.total_number_particles(), rec


def configurations() -> dict:
    """name -> function(image, E) -> (particles, reconstruction)."""
    configs = {"ours": _ours, "ours, lambda 0": partial(_ours, lambda_=0.0)}
    try:
        import pyapr  # noqa: F401
    except ImportError:
        return configs
    return configs | {"pyapr": partial(_pyapr, auto=False), "pyapr, auto": partial(_pyapr, auto=True)}


def measure(n_images: int, seed: int) -> dict:
    """{config: {E: {"cr": [...], "mae": [...], "exact": [...]}}} over ``n_images`` stream images."""
    stream = ShapeStream(seed=seed, size=256, batch=36)
    images = [stream.image(i)[0].astype(np.float32) for i in range(n_images)]
    out: dict = {}
    for name, form in configurations().items():
        out[name] = {}
        for e in E_VALUES:
            rows = {"cr": [], "mae": [], "exact": []}
            for image in images:
                n, rec = form(np.ascontiguousarray(image), e)
                err = np.abs(rec - image)
                rows["cr"].append(image.size / n)
                rows["mae"].append(float(err.mean()))
                rows["exact"].append(bool(err.max() <= 1e-3 * (image.max() - image.min())))
            out[name][e] = rows
            print(f"{name:15s} E={e:.1f} CR mean {np.mean(rows['cr']):6.1f}  exact {np.mean(rows['exact']):.2f}",
                  flush=True)
    return out


def _plot(results: dict, path: Path) -> None:
    """Box plots of CR and mean error against E, one box per configuration (Figure 4.2 A-B)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        pos = [i + (k - (len(names) - 1) / 2) * width for i in range(len(E_VALUES))]
        for ax, key in zip(axes, ("cr", "mae")):
            box = ax.boxplot([results[name][e][key] for e in E_VALUES], positions=pos, widths=width * 0.9,
                             showfliers=False, patch_artist=True)
            for patch in box["boxes"]:
                patch.set_facecolor(f"C{k}")
            ax.plot([], [], color=f"C{k}", lw=6, label=name)
    for ax, title in zip(axes, ("A: computational ratio", "B: mean absolute reconstruction error")):
        ax.set_xticks(range(len(E_VALUES)), [f"{e:.1f}" for e in E_VALUES])
        ax.set_xlabel("relative error threshold E")
        ax.set_title(title)
    axes[0].axhline(50, color="grey", ls=":", lw=1, label="thesis, E <= 0.2: slightly above 50")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results: dict, n_images: int, seed: int) -> str:
    """The markdown page: setting, machine, command, the figure and one table row per configuration and E."""
    lines = ["# APR of the synthetic shapes (thesis 4.1.2, Figure 4.2 A-B)", "",
             f"{n_images} stream images (default distribution, 256x256, seed {seed}); CR = pixels / particles; "
             "error = mean absolute piecewise-constant reconstruction error (intensities in [0, 1]); exact = "
             f"largest error under 1e-3 of the image's contrast. Thesis: {THESIS}.", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs. Command: "
             f"`.venv/bin/python benchmarks/bench_shapes_apr.py --images {n_images}`.", "",
             "![APR of the shapes](shapes_apr.png)", "",
             "| configuration | E | CR mean | CR median (quartiles) | error mean | exact |",
             "|---|---:|---:|---|---:|---:|"]
    for name, by_e in results.items():
        for e, rows in by_e.items():
            q1, q2, q3 = np.percentile(rows["cr"], [25, 50, 75])
            lines.append(f"| {name} | {e:.1f} | {np.mean(rows['cr']):.1f} | {q2:.1f} ({q1:.1f}-{q3:.1f}) | "
                         f"{np.mean(rows['mae']):.4f} | {np.mean(rows['exact']):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000, help="stream images (thesis: 1000)")
    p.add_argument("--seed", type=int, default=4102)
    args = p.parse_args(argv)
    results = measure(args.images, args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    _plot(results, RESULTS / "shapes_apr.png")
    (RESULTS / "shapes_apr.md").write_text(report(results, args.images, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
