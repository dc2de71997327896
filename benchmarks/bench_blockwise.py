"""Blockwise (out-of-core) conversion vs whole-volume conversion of a memmapped stack.

    .venv/bin/python benchmarks/bench_blockwise.py                       # 256x1024x1024 uint16, 600MiB
    .venv/bin/python benchmarks/bench_blockwise.py --shape 64 512 512 --max-memory 200MiB

Writes a synthetic uint16 stack (Gaussian blobs on a noisy background, fixed
seed) to a temporary ``.npy`` file, then converts it in two child processes:
``whole`` (``APR.from_image`` of the memmap, read whole) and ``blocks``
(``APR.from_image(..., max_memory=...)``). Each child reports its wall time
and peak RSS (``ru_maxrss``, which counts the memmap pages it touched). The
script prints one markdown row: times, ratio, peak RSS, particle counts and
the fraction of particles that differ. The goal of issue 12: peak RSS under
1 GiB, particles within 0.5 %, time at most 1.3x the whole-volume time.
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


def _write_stack(path: str, shape, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    blobs = [(rng.uniform(0, nz), rng.uniform(0, ny), rng.uniform(0, nx), rng.uniform(300, 1500),
              rng.uniform(20, 400)) for _ in range(max(8, nz * ny * nx // 2_000_000))]
    mm = np.lib.format.open_memmap(path, "w+", np.uint16, shape)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    for z in range(nz):
        plane = 100 + rng.normal(0, 3, (ny, nx)).astype(np.float32)
        for cz, cy, cx, amp, w in blobs:
            if abs(z - cz) < 3 * np.sqrt(w):
                plane += amp * np.exp(-((z - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2) / w)
        mm[z] = np.clip(plane, 0, 65535)
    mm.flush()
    del mm


def _child(mode: str, path: str, max_memory: str, out: str) -> None:
    from napari_aprnet import APR

    image = np.load(path, mmap_mode="r")
    t0 = time.perf_counter()
    kwargs = {"max_memory": max_memory} if mode == "blocks" else {}
    apr = APR.from_image(image, sigma_th=20.0, grad_th=2.0, **kwargs)
    seconds = time.perf_counter() - t0
    np.savez(out, levels=apr.levels, coords=apr.coords, values=apr.values)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss": rss, "particles": apr.n_particles}))


def _run(mode: str, path: str, max_memory: str, out: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--path", path, "--max-memory", max_memory, "--out", out]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 1024, 1024])
    ap.add_argument("--max-memory", default="600MiB")
    ap.add_argument("--child", choices=("whole", "blocks"))
    ap.add_argument("--path")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.path, args.max_memory, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "stack.npy")
        _write_stack(path, tuple(args.shape))
        rows = {m: _run(m, path, args.max_memory, os.path.join(tmp, f"{m}.npz")) for m in ("whole", "blocks")}
        a, b = (np.load(os.path.join(tmp, f"{m}.npz")) for m in ("whole", "blocks"))
        same = len(a["levels"]) == len(b["levels"]) and np.array_equal(a["coords"], b["coords"]) \
            and np.array_equal(a["levels"], b["levels"])
        diff = abs(len(a["levels"]) - len(b["levels"])) / len(a["levels"])
        vmax = float(np.abs(a["values"] - b["values"]).max()) if same else float("nan")
    w, k = rows["whole"], rows["blocks"]
    print("| shape | max_memory | whole s | blocks s | ratio | whole peak RSS MiB | blocks peak RSS MiB | "
          "particles whole | particles blocks | count diff % | identical cells | max value diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {'x'.join(map(str, args.shape))} | {args.max_memory} | {w['seconds']:.1f} | {k['seconds']:.1f} | "
          f"{k['seconds'] / w['seconds']:.2f} | {w['peak_rss'] / 2**20:.0f} | {k['peak_rss'] / 2**20:.0f} | "
          f"{w['particles']} | {k['particles']} | {100 * diff:.3f} | {same} | {vmax:.3g} |")


if __name__ == "__main__":
    main()
