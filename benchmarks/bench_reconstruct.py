"""Benchmark: C reconstruction (constant, level, smooth, region) vs numpy and pyapr (not a test).

Run:  .venv/bin/python benchmarks/bench_reconstruct.py [--threads 2] [--quick]

Peers, timed in the same run on the same APR:
- numpy: ``values[structure.particle_id_image()]`` (the dense id image is the
  only pure-numpy way; its build time is shown separately);
- pyapr (LibAPR) when installed: its own APR of the same image at the same E,
  ``pyapr.reconstruction.reconstruct_constant / reconstruct_smooth``; the table
  gives its particle count since the APRs differ.
Prints a table and writes benchmarks/results/reconstruct.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def _parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller images")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "reconstruct.md"))
    return ap.parse_args()


ARGS = _parse()
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))

from napari_aprnet import APR, _native  # noqa: E402

#: Thresholds so the dim background is represented coarsely (background level is 100).
IP_TH, SIGMA_TH = 120.0, 10.0


def blobs(shape, n=25, seed=0):
    """Bright Gaussian blobs on a dim background with mild noise (a sparse microscopy-like image)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    img = np.full(shape, 100.0, np.float32)
    for _ in range(n):
        c = rng.uniform(-0.8, 0.8, len(shape))
        r = rng.uniform(0.03, 0.12)
        img += 1000.0 * np.exp(-sum((g - ci) ** 2 for g, ci in zip(grids, c)) / (2 * r * r))
    img += rng.normal(0, 0.5, shape).astype(np.float32)
    return img.astype(np.float32)


def best(fn, repeat=3):
    times = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def pyapr_times(image, rel_error):
    try:
        import pyapr
    except ImportError:
        return None
    params = pyapr.APRParameters()
    params.rel_error = rel_error
    params.Ip_th = IP_TH
    params.sigma_th = SIGMA_TH
    apr, parts = pyapr.converter.get_apr(image, params=params, verbose=False)
    tc, _ = best(lambda: pyapr.reconstruction.reconstruct_constant(apr, parts))
    ts, _ = best(lambda: pyapr.reconstruction.reconstruct_smooth(apr, parts))
    return apr.total_number_particles(), tc, ts


def main():
    _native.set_num_threads(ARGS.threads)
    shapes = [(1024, 1024), (64, 128, 128)] if ARGS.quick else [(2048, 2048), (128, 256, 256)]
    rows = []
    for shape in shapes:
        image = blobs(shape)
        apr = APR.from_image(image, 0.1, Ip_th=IP_TH, sigma_th=SIGMA_TH)
        s = apr.structure
        apr.reconstruct(region=tuple(slice(0, 4) for _ in shape))  # build + cache row tables
        apr.reconstruct(mode="smooth", region=tuple(slice(0, 4) for _ in shape))
        t_const, rec = best(lambda: apr.reconstruct())
        t_level, _ = best(lambda: apr.reconstruct(mode="level"))
        t_smooth, _ = best(lambda: apr.reconstruct(mode="smooth"), repeat=2)
        region = tuple(slice(n // 4, n // 4 + max(1, n // 8)) for n in shape)
        t_region, _ = best(lambda: apr.reconstruct(region=region))
        t_ids, ids = best(lambda: s.particle_id_image(), repeat=1)
        t_gather, ref = best(lambda: apr.values[ids])
        assert np.array_equal(rec, ref)
        peer = pyapr_times(image, 0.1)
        rows.append((shape, apr.n_particles, apr.computational_ratio, t_const, t_level, t_smooth, t_region,
                     t_ids, t_gather, peer))
    lines = ["# Reconstruction benchmark\n",
             f"machine: {platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cores), "
             f"threads: {ARGS.threads}, image: Gaussian blobs + noise (sd 0.5), E = 0.1, Ip_th = {IP_TH:g}, sigma_th = {SIGMA_TH:g}\n",
             "| shape | particles | CR | constant C (s) | level C (s) | smooth C (s) | region 1/8 per axis (s) "
             "| numpy id image (s) | numpy gather (s) | constant vs numpy gather+ids | pyapr particles "
             "| pyapr constant (s) | pyapr smooth (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for shape, npart, cr, tc, tl, ts, tr, tid, tg, peer in rows:
        p = ("-", "-", "-") if peer is None else (str(peer[0]), f"{peer[1]:.4f}", f"{peer[2]:.4f}")
        lines.append(f"| {shape} | {npart} | {cr:.2f} | {tc:.4f} | {tl:.4f} | {ts:.4f} | {tr:.5f} | "
                     f"{tid:.4f} | {tg:.4f} | {(tid + tg) / tc:.1f}x faster | {p[0]} | {p[1]} | {p[2]} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(ARGS.out), exist_ok=True)
    with open(ARGS.out, "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
