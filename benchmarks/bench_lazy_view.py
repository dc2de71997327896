"""Browsing a big APR without reconstructing it (issue 12, part 2): lazy pyramids against whole reconstruction.

    .venv/bin/python benchmarks/bench_lazy_view.py                    # 512x2048x2048 (and 128x2048x2048)
    .venv/bin/python benchmarks/bench_lazy_view.py --shape 64 512 512 --whole-shape 64 512 512 --out /dev/stdout

A synthetic uint16-like APR is made directly, without a pixel image
(:func:`napari_aprnet.samples.lattice_blobs_apr`: 16-pixel cells, pixel cells
around Gaussian blobs on a lattice), and saved as an ``.apr`` file. Fresh
child processes then:

- ``lazy``: open the file and build the reconstruction and level-map
  pyramids as the reader does, then ask for what napari asks for its first
  picture of a 3D layer shown in 2D (for both layers: the thumbnail, a plane
  of the coarsest level, and the middle plane at the level napari picks for
  a 2048 and a 1000 pixel canvas, with napari's ``compute_multiscale_level``),
  then slice changes at full resolution (random planes, both layers), and
  the coarsest level whole (napari's 3D view);
- ``whole``: open the file and reconstruct the whole volume (constant and
  level map), what the reader did before; on a smaller volume when the big
  one would not fit in memory (``--whole-shape``).

Each child reports wall times and its peak RSS (``VmHWM``) and its RSS
after imports; memory is compared with the particle data (values, levels
and coordinates: 17 bytes per particle). Writes a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _memory import status_kib

#: Canvas sides (pixels) of the first pictures; napari shows a coarser level only when the plane is
#: more than twice the canvas (a 2048 plane: level 0 on 2048 and 1024, level 1 on 1000).
CANVASES = (2048, 1000)
GOALS = "first picture < 2 s, slice change < 0.3 s, memory < particle data + a few slices"


def _rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS"))


def _peak() -> int:
    """Peak RSS of this process (VmHWM: unlike ru_maxrss it is not inherited from the parent at exec)."""
    return status_kib("VmHWM:") * 1024


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _child_lazy(path: str, levels: dict, n_changes: int) -> dict:
    from napari_aprnet.apr import APR
    from napari_aprnet.lazy import apr_pyramid

    base = _rss()
    t_load, apr = _timed(lambda: APR.load(path))
    t_pyr, (recon, lmap) = _timed(lambda: (apr_pyramid(apr), apr_pyramid(apr, "level")))
    nz = apr.shape[0]
    out = {"particles": apr.n_particles, "shape": apr.shape, "n_levels": len(recon), "base_rss": base,
           "load_s": t_load, "pyramid_s": t_pyr, "particle_bytes": apr.n_particles * (4 + 1 + 4 * apr.ndim)}
    for canvas, level in levels.items():
        def first(level=level):  # fresh pyramids (empty tile caches) for each canvas
            f = 2 ** (len(recon) - 1)
            for layer in (apr_pyramid(apr), apr_pyramid(apr, "level")):  # thumbnail, then the shown level's plane
                np.asarray(layer[-1][nz // 2 // f])
                np.asarray(layer[level][(nz // 2) >> level])
        t, _ = _timed(first)
        out[f"first_picture_s_canvas{canvas}"] = t
        out[f"level_canvas{canvas}"] = level
    rng = np.random.default_rng(0)
    changes = []
    for z in rng.choice(nz, size=n_changes, replace=False):
        t, _ = _timed(lambda z=z: (recon[0][int(z)], lmap[0][int(z)]))
        changes.append(t)
    out["slice_change_s"] = changes
    out["slice_bytes"] = int(np.prod(apr.shape[1:])) * 5  # float32 plane + uint8 level plane
    out["view3d_s"], _ = _timed(lambda: (np.asarray(recon[-1]), np.asarray(lmap[-1])))
    out["coarsest_shape"] = recon[-1].shape
    out["cache_bytes"] = recon[0]._source.cache.nbytes + lmap[0]._source.cache.nbytes
    out["peak_rss"] = _peak()
    return out


def _child_whole(path: str) -> dict:
    from napari_aprnet.apr import APR

    base = _rss()
    t_load, apr = _timed(lambda: APR.load(path))
    t_rec, (recon, lmap) = _timed(lambda: (apr.reconstruct(), apr.reconstruct(mode="level")))
    t_plane, _ = _timed(lambda: (np.array(recon[apr.shape[0] // 3]), np.array(lmap[apr.shape[0] // 3])))
    return {"particles": apr.n_particles, "shape": apr.shape, "base_rss": base, "load_s": t_load,
            "reconstruct_s": t_rec, "slice_change_s": [t_plane], "peak_rss": _peak(),
            "particle_bytes": apr.n_particles * (4 + 1 + 4 * apr.ndim), "image_bytes": recon.nbytes + lmap.nbytes}


def _make_file(shape, path: Path, period: int, radius: float) -> dict:
    from napari_aprnet.samples import lattice_blobs_apr

    t, apr = _timed(lambda: lattice_blobs_apr(tuple(shape), period=period, radius=radius))
    apr.save(str(path))
    return {"make_s": t, "particles": apr.n_particles, "cr": apr.computational_ratio}


def _napari_levels(shape, n_levels: int) -> dict:
    """The pyramid level napari shows first for a full-plane view on square canvases of CANVASES pixels."""
    from napari.layers.utils.layer_utils import compute_multiscale_level

    from napari_aprnet.structure import level_max_for_shape, level_shape

    lmax = level_max_for_shape(shape)
    shapes = np.array([level_shape(shape, lmax, lmax - k)[1:] for k in range(n_levels)], dtype=float)
    factors = shapes[0] / shapes
    return {c: int(compute_multiscale_level(shapes[0], np.array([c, c]), factors)) for c in CANVASES}


def _run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def _table(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Browsing a big APR: lazy pyramids vs whole reconstruction",
        "",
        f"machine: {meta['machine']}, OpenMP threads: {meta['threads']}; run with `nice -n 19` on a machine "
        f"shared with other jobs (load average {meta['load']} at the start): times are upper bounds.",
        f"Goals (issue 12): {GOALS}.",
        "Synthetic uint16-like APRs made directly (`samples.lattice_blobs_apr`, period "
        f"{meta['period']}, radius {meta['radius']}), read from an `.apr` file in a fresh process.",
        "",
        "| volume | particles | particle data (MiB) | method | open file (s) | first picture (s) | "
        "slice change median / max (s) | 3D view, coarsest level (s) | peak RSS (MiB) | RSS over imports (MiB) | "
        "of which tile caches (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        changes = r["slice_change_s"]
        if r["method"] == "lazy":
            first = "; ".join(f"{r[f'first_picture_s_canvas{c}'] + r['pyramid_s']:.3f} (canvas {c}, level "
                              f"{r[f'level_canvas{c}']})" for c in CANVASES)
            method = f"lazy pyramid ({r['n_levels']} levels)"
            view3d = f"{r['view3d_s']:.2f} ({'x'.join(map(str, r['coarsest_shape']))})"
        else:
            first = f"{r['reconstruct_s']:.2f} (whole volume + level map)"
            method = "whole reconstruction"
            view3d = "(full volume in memory)"
        lines.append(f"| {shape} | {r['particles']:,} | {_mib(r['particle_bytes'])} | {method} | {r['load_s']:.2f} | "
                     f"{first} | {np.median(changes):.4f} / {max(changes):.4f} | {view3d} | "
                     f"{_mib(r['peak_rss'])} | {_mib(r['peak_rss'] - r['base_rss'])} | "
                     f"{_mib(r['cache_bytes']) if 'cache_bytes' in r else '-'} |")
    lines += ["", "First picture: after opening the file, both layers' thumbnails (a plane of the coarsest level) and "
              "the middle plane at the level napari picks for the canvas. Slice change: one full-resolution plane "
              "of the reconstruction and of the level map (random planes, not cached before). "
              "The whole reconstruction is measured on the smaller volume when the big one would not fit in memory "
              "beside the other jobs; its 'slice change' is copying a plane out of the reconstructed volume. "
              "RSS over imports: the particle data, their row tables, h5py, the slices being read and the tile "
              "caches (64 MiB at most per layer, recently read planes kept for going back)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=(512, 2048, 2048))
    p.add_argument("--whole-shape", type=int, nargs=3, default=(128, 2048, 2048),
                   help="volume for the whole reconstruction (and a lazy run beside it)")
    p.add_argument("--period", type=int, default=80)
    p.add_argument("--radius", type=float, default=5.0)
    p.add_argument("--changes", type=int, default=10)
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "lazy_view.md"))
    p.add_argument("--child", choices=["lazy", "whole"])
    p.add_argument("--path")
    p.add_argument("--levels", default="{}")
    args = p.parse_args(argv)
    if args.child:
        res = _child_lazy(args.path, {int(k): v for k, v in json.loads(args.levels).items()}, args.changes) \
            if args.child == "lazy" else _child_whole(args.path)
        print(json.dumps(res))
        return 0
    from napari_aprnet import _native
    from napari_aprnet.lazy import pyramid_depth
    from napari_aprnet.structure import level_max_for_shape

    meta = {"machine": f"{platform.machine()} ({os.cpu_count()} cores)", "threads": _native.max_threads(),
            "load": " ".join(f"{v:.1f}" for v in os.getloadavg()), "period": args.period, "radius": args.radius}
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for shape, whole in ((tuple(args.shape), False), (tuple(args.whole_shape), True)):
            path = Path(tmp) / ("x".join(map(str, shape)) + ".apr")
            made = _make_file(shape, path, args.period, args.radius)
            print(f"made {path.name}: {made}", flush=True)
            levels = _napari_levels(shape, pyramid_depth(shape, level_max_for_shape(shape)))
            lazy = _run_child(["--child", "lazy", "--path", str(path), "--levels", json.dumps(levels),
                               "--changes", str(args.changes)])
            rows.append({"method": "lazy", **lazy})
            print(json.dumps(rows[-1]), flush=True)
            if whole:
                rows.append({"method": "whole", **_run_child(["--child", "whole", "--path", str(path)])})
                print(json.dumps(rows[-1]), flush=True)
            path.unlink()
    table = _table(rows, meta)
    Path(args.out).write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
