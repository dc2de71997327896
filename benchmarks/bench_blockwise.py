"""Blockwise (out-of-core) conversion vs whole-volume conversion (ours and pyapr) of a stack on disk.

    .venv/bin/python benchmarks/bench_blockwise.py                       # 256x1024x1024 uint16, 600MiB
    .venv/bin/python benchmarks/bench_blockwise.py --shape 64 512 512 --max-memory 200MiB
    .venv/bin/python benchmarks/bench_blockwise.py --shape 2048 2560 2560 --max-memory 8GiB \\
        --blobs 3 --sigma-th 50 --grad-th 10 --only blocks --dir /work/tmp_big     # larger than memory

Writes a synthetic uint16 stack to a ``.npy`` file (``--dir``, deleted at the
end unless ``--keep``): tiles of 64x512x512 pixels, each a rolled copy of one
of four seeded tiles of Gaussian blobs (``--blobs`` per tile, sigma 2/4/8 px)
on a background of 100 with Gaussian noise (sd 2), so a stack of any size is
written at disk speed. Then converts it in child processes, one at a time:
``whole`` (``APR.from_image`` of the memmap, read whole), ``blocks``
(``APR.from_image(..., max_memory=..., workers=...)``) and ``pyapr`` (pyapr
1.0.7 on the stack read into memory, if importable; the same parameters).
Each child reports its wall time, CPU time (user + system, its worker
processes included) and peak RSS (``ru_maxrss``; it counts the memmap pages a
process touched; for ``workers > 1`` the largest worker's peak is given
separately). The script prints markdown rows: times, ratios blocks / whole,
peak RSS, particle counts and the fraction of particle cells that are in one
result but not in the other. Goals of issue 12: peak RSS under 1 GiB,
particles within 0.5 %, time at most 1.3x the whole-volume time.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

TILE = (64, 512, 512)


def _tile(n_blobs: int, seed: int) -> np.ndarray:
    """One periodic tile of blurred blobs on a noisy background of 100 (uint16)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    img = np.zeros(TILE, np.float32)
    for sig in (2.0, 4.0, 8.0):
        d = np.zeros(TILE, np.float32)
        k = n_blobs // 3 + 1
        np.add.at(d, tuple(rng.integers(0, s, k) for s in TILE),
                  (rng.uniform(500, 3000, k) * (2 * np.pi * sig * sig) ** 1.5).astype(np.float32))
        img += gaussian_filter(d, sig, mode="wrap")
    img += 100 + rng.normal(0, 2, TILE).astype(np.float32)
    return np.clip(img, 0, 65535).astype(np.uint16)


def _write_stack(path: str, shape, n_blobs: int, seed: int = 0) -> None:
    """Write a ``.npy`` uint16 stack of rolled tiles with plain writes (no memory map: no page-cache RSS)."""
    rng = np.random.default_rng(seed)
    tiles = [_tile(n_blobs, seed + 1 + i) for i in range(4)]
    nz, ny, nx = shape
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<u2", "fortran_order": False, "shape": tuple(shape)})
        for z0 in range(0, nz, TILE[0]):
            slab = np.empty((min(TILE[0], nz - z0), ny, nx), np.uint16)
            for y0 in range(0, ny, TILE[1]):
                for x0 in range(0, nx, TILE[2]):
                    t = np.roll(tiles[rng.integers(4)], tuple(rng.integers(0, TILE[1], 2)), axis=(1, 2))
                    h, w = min(TILE[1], ny - y0), min(TILE[2], nx - x0)
                    slab[:, y0:y0 + h, x0:x0 + w] = t[: len(slab), :h, :w]
            fh.write(slab.tobytes())


def _params(args):
    from napari_aprnet.params import APRParameters

    return APRParameters(rel_error=0.1, lambda_=3.0, Ip_th=0.0, sigma_th=args.sigma_th, grad_th=args.grad_th, psf=2)


def _child(args) -> None:
    image = np.load(args.path, mmap_mode="r")
    t0, c0 = time.perf_counter(), time.process_time()
    if args.child == "pyapr":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_convert import run_pyapr

        apr, parts, _ = run_pyapr(np.array(image), args.sigma_th, args.grad_th, False)
        seconds = time.perf_counter() - t0
        n = int(apr.total_number_particles())
        levels = coords = values = np.zeros(0)
    else:
        from napari_aprnet import APR

        kwargs = {"max_memory": args.max_memory, "workers": args.workers} if args.child == "blocks" else {}
        apr = APR.from_image(image, params=_params(args), **kwargs)
        seconds = time.perf_counter() - t0
        n, levels, coords, values = apr.n_particles, apr.levels, apr.coords, apr.values
    if args.out:
        np.savez(args.out, levels=levels, coords=coords, values=values)
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - c0 + kids.ru_utime + kids.ru_stime
    print(json.dumps({"mode": args.child, "seconds": seconds, "cpu": cpu, "peak_rss": own.ru_maxrss * 1024,
                      "worker_peak_rss": kids.ru_maxrss * 1024, "particles": n}))


def _run(mode: str, args, path: str, out: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--path", path, "--max-memory", args.max_memory,
           "--workers", str(args.workers), "--sigma-th", str(args.sigma_th), "--grad-th", str(args.grad_th)]
    res = subprocess.run(cmd + (["--out", out] if out else []), capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _cell_keys(levels: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """One int64 per particle cell (level, z, y, x), unique."""
    bits = max(int(coords.max()).bit_length(), 1)
    key = levels.astype(np.int64)
    for axis in range(coords.shape[1]):
        key = (key << bits) | coords[:, axis].astype(np.int64)
    return key


def _compare(a, b) -> tuple[int, int, float]:
    """Cells in only one of the results, a's count, and the largest value difference of the common cells."""
    ka, kb = _cell_keys(a["levels"], a["coords"]), _cell_keys(b["levels"], b["coords"])
    common, ia, ib = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
    differing = len(ka) + len(kb) - 2 * len(common)
    vmax = float(np.abs(a["values"][ia] - b["values"][ib]).max()) if len(common) else float("nan")
    return differing, len(ka), vmax


def _table(args, rows: dict, diff: tuple | None, vmax: float | None) -> str:
    shape = "x".join(map(str, args.shape))
    lines = ["| shape | tool | max_memory | workers | wall s | CPU s | wall / whole | CPU / whole | peak RSS MiB | "
             "particles | cells not in both (of whole's) | max value diff |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    w = rows.get("whole")
    for mode, r in rows.items():
        ratio = (f"{r['seconds'] / w['seconds']:.2f} | {r['cpu'] / w['cpu']:.2f}" if w and mode != "whole"
                 else "1 | 1" if mode == "whole" else "- | -")
        rss = f"{r['peak_rss'] / 2**20:.0f}"
        if mode == "blocks" and args.workers > 1:
            rss += f" (+ {args.workers} workers of <= {r['worker_peak_rss'] / 2**20:.0f})"
        extra = (f"{diff[0]:,} ({100 * diff[0] / diff[1]:.2g} %) | {vmax:.3g}" if mode == "blocks" and diff
                 else "- | -")
        lines.append(f"| {shape} | {mode} | {args.max_memory if mode == 'blocks' else '-'} | "
                     f"{args.workers if mode == 'blocks' else 1} | {r['seconds']:.1f} | {r['cpu']:.1f} | {ratio} | "
                     f"{rss} | {r['particles']:,} | {extra} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 1024, 1024])
    ap.add_argument("--max-memory", default="600MiB")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--blobs", type=int, default=30, help="blobs per 64x512x512 tile (density)")
    ap.add_argument("--sigma-th", type=float, default=20.0)
    ap.add_argument("--grad-th", type=float, default=2.0)
    ap.add_argument("--only", nargs="+", choices=("whole", "blocks", "pyapr"), default=["whole", "blocks", "pyapr"])
    ap.add_argument("--dir", default=None, help="where the stack is written (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the stack (and reuse it if there)")
    ap.add_argument("--child", choices=("whole", "blocks", "pyapr"))
    ap.add_argument("--path")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    modes = [m for m in ("whole", "blocks", "pyapr") if m in args.only]
    if "pyapr" in modes and subprocess.run([sys.executable, "-c", "import pyapr"], capture_output=True).returncode:
        modes.remove("pyapr")
        print("pyapr is not importable: no pyapr row (pip install pyapr==1.0.7 on Python <= 3.11)", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(args.dir or tmp, f"stack_{'x'.join(map(str, args.shape))}_{args.blobs}.npy")
        if not os.path.exists(path):
            t0 = time.perf_counter()
            _write_stack(path, tuple(args.shape), args.blobs)
            print(f"wrote {path} ({os.path.getsize(path) / 2**30:.1f} GiB) in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
        try:
            outs = {m: os.path.join(tmp, f"{m}.npz") if m != "pyapr" else None for m in modes}
            rows = {}
            for m in modes:
                rows[m] = _run(m, args, path, outs[m] if "whole" in modes else None)
                print(f"{m}: {json.dumps(rows[m])}", file=sys.stderr, flush=True)
            diff = vmax = None
            if "whole" in rows and "blocks" in rows:
                *diff, vmax = _compare(np.load(outs["whole"]), np.load(outs["blocks"]))
        finally:
            if not args.keep:
                os.remove(path)
    print(_table(args, rows, diff, vmax))


if __name__ == "__main__":
    main()
