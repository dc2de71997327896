"""Benchmark APR formation: napari_aprnet.formation.form_apr vs pyapr 1.0.7.

pyapr (LibAPR's Python wrapper) is NOT a dependency of napari-aprnet; install
it only to run this script: ``.venv/bin/pip install pyapr==1.0.7``.

Images (deterministic, seeded):
- ``blobs2d``: 2048x2048 uint16, 400 Gaussian blobs (sigma 2/4/8 px) on a
  background of 100, Poisson noise;
- ``blobs3d``: 128x512x512 uint16 stack of the same kind (300 blobs);
- ``photo``: matplotlib's offline sample ``grace_hopper.jpg`` (512x600 RGB
  photo shipped in mpl-data/sample_data), converted to uint8 grey with the
  BT.601 luma weights, fed to both tools.

Modes: ``explicit`` = both tools with identical explicit parameters
(rel_error 0.1, lambda 3, psf 2, Ip_th 0 and the sigma_th / grad_th that
pyapr's automatic mode chose for that image); ``auto`` = each tool's own
automatic thresholds. Reported: particles, computational ratio, mean / max
absolute piecewise-constant reconstruction error, conversion time (minimum
of the repeats: the most stable statistic on a shared machine; the median is
kept in the JSON rows), ratio ours / pyapr, and peak memory: the VmHWM of
/proc/self/status minus the RSS just before the conversion, in a *fresh*
subprocess per tool and configuration (so C allocations count, and memory a
previous conversion left to the allocator does not hide anything). Every
configuration runs in a fresh subprocess with OMP_NUM_THREADS set, both tools
alternating in that process.

Usage::

    .venv/bin/python benchmarks/bench_convert.py [--quick] [--threads 2]

Writes ``benchmarks/results/convert.md``.
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

import numpy as np
from _memory import reset_peak, status_kib

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(tempfile.gettempdir(), "aprnet_bench_cache")
RESULTS = os.path.join(HERE, "results", "convert.md")


# ----- images ------------------------------------------------------------------

def blob_image(shape, n_blobs, seed=0, background=100.0, dtype=np.uint16):
    """Blurred blobs with Poisson noise (deterministic for a given seed)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    for sig in (2.0, 4.0, 8.0):
        d = np.zeros(shape, np.float32)
        k = n_blobs // 3 + 1
        idx = tuple(rng.integers(0, s, k) for s in shape)
        amp = rng.uniform(500, 3000, k) * (2 * np.pi * sig * sig) ** (len(shape) / 2)
        np.add.at(d, idx, amp.astype(np.float32))
        img += gaussian_filter(d, sig, mode="constant")
    img = rng.poisson(img + background)
    return np.clip(img, 0, np.iinfo(dtype).max).astype(dtype)


def photo_image():
    import imageio.v3 as iio
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    rgb = iio.imread(path).astype(np.float32)
    grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return np.clip(np.round(grey), 0, 255).astype(np.uint8)


def get_image(name: str) -> np.ndarray:
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, f"{name}.npy")
    if os.path.exists(path):
        return np.load(path)
    if name == "photo":
        img = photo_image()
    elif name.startswith("blobs2d"):
        side = int(name.split("_")[1]) if "_" in name else 2048
        img = blob_image((side, side), max(4, int(400 * (side / 2048) ** 2)), seed=0)
    elif name == "blobs3d":
        img = blob_image((128, 512, 512), 300, seed=1)
    else:
        raise ValueError(name)
    tmp = path + f".{os.getpid()}.tmp.npy"
    np.save(tmp, img)
    os.replace(tmp, path)
    return img


# ----- measurement (worker side) ---------------------------------------------------

def peak_worker(spec: dict) -> dict:
    """One conversion in this fresh process: peak RSS (VmHWM) minus the RSS before it.

    Both tools are imported and the image is loaded before the baseline, and
    the high-water mark is reset (``/proc/self/clear_refs``), so the number
    is the extra memory the conversion itself needed, C allocations included.
    """
    img = get_image(spec["image"])
    import pyapr  # noqa: F401

    import napari_aprnet.formation  # noqa: F401

    reset_peak()
    base = status_kib("VmRSS:")
    run = run_ours if spec["tool"] == "ours" else run_pyapr
    res = run(img, spec["sigma_th"], spec["grad_th"], spec["auto"])
    peak = status_kib("VmHWM:")
    del res
    return {"peak_mib": (peak - base) / 1024}


def fresh_peak_mib(tool: str, image: str, sigma_th: float, grad_th: float, auto: bool) -> float:
    """Peak memory of one conversion, measured in a fresh subprocess (same OMP_NUM_THREADS)."""
    spec = {"tool": tool, "image": image, "sigma_th": sigma_th, "grad_th": grad_th, "auto": auto}
    cmd = [sys.executable, os.path.abspath(__file__), "--peak", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"peak-memory worker failed for {spec}:\n{res.stderr[-3000:]}")
    return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"])


def run_ours(img, sigma_th, grad_th, auto):
    from napari_aprnet.formation import form_apr
    from napari_aprnet.params import APRParameters

    p = APRParameters(rel_error=0.1, lambda_=3.0, Ip_th=0.0, sigma_th=sigma_th, grad_th=grad_th,
                      psf=2, auto_parameters=auto)
    return form_apr(img, p)


def ours_recon(res, img):
    s, v = res
    return v[s.particle_id_image()], s.n_particles


def run_pyapr(img, sigma_th, grad_th, auto):
    import pyapr

    pp = pyapr.APRParameters()
    pp.rel_error, pp.gradient_smoothing, pp.Ip_th = 0.1, 3.0, 0.0
    pp.sigma_th, pp.grad_th, pp.auto_parameters = sigma_th, grad_th, auto
    pp.psfx = pp.psfy = pp.psfz = 2.0
    conv = pyapr.converter.FloatConverter()
    apr, parts = pyapr.converter.get_apr(img, converter=conv, params=pp)
    return apr, parts, conv


def pyapr_recon(res, img):
    import pyapr

    apr, parts, _ = res
    rec = np.asarray(pyapr.reconstruction.reconstruct_constant(apr, parts)).astype(np.float32)
    return rec.reshape(img.shape), apr.total_number_particles()


def pyapr_auto_thresholds(img):
    """sigma_th, grad_th chosen by pyapr's automatic mode for img."""
    res = run_pyapr(img, 0.0, 0.0, True)
    par = res[2].get_parameters()
    return float(par.sigma_th), float(par.grad_th)


def worker(spec: dict) -> dict:
    img = get_image(spec["image"])
    repeats = spec["repeats"]
    sth, gth = pyapr_auto_thresholds(img)
    out = {"image": spec["image"], "shape": list(img.shape), "dtype": str(img.dtype),
           "threads": int(os.environ.get("OMP_NUM_THREADS", "0")), "pyapr_auto": [sth, gth], "rows": []}
    tools = {"ours": (run_ours, ours_recon), "pyapr": (run_pyapr, pyapr_recon)}
    for mode in spec["modes"]:
        auto = mode == "auto"
        times = {k: [] for k in tools}
        for k, (run, _) in tools.items():  # warm-up
            run(img, sth, gth, auto)
        for _ in range(repeats):
            for k, (run, _) in tools.items():
                t0 = time.perf_counter()
                run(img, sth, gth, auto)
                times[k].append(time.perf_counter() - t0)
        for k, (run, recon) in tools.items():
            row = {"tool": k, "mode": mode, "time_ms": 1e3 * float(np.min(times[k])),
                   "time_median_ms": 1e3 * float(np.median(times[k])),
                   "peak_mib": fresh_peak_mib(k, spec["image"], sth, gth, auto)}
            if spec.get("quality", True):
                res = run(img, sth, gth, auto)
                rec, n = recon(res, img)
                err = np.abs(rec.astype(np.float64) - img.astype(np.float64))
                row.update(particles=int(n), cr=img.size / n, err_mean=float(err.mean()), err_max=float(err.max()))
                del res
            out["rows"].append(row)
    return out


# ----- orchestration ------------------------------------------------------------------

def run_worker(spec: dict, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"worker failed for {spec}:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt_main(results) -> list[str]:
    lines = ["| image | shape | mode | tool | particles | CR | mean err | max err | min time (ms) | median time (ms) | ours/pyapr (min) | ours/pyapr (median) | peak RSS (MiB) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        shape = "x".join(map(str, r["shape"]))
        for mode in ("explicit", "auto"):
            rows = {x["tool"]: x for x in r["rows"] if x["mode"] == mode}
            if not rows:
                continue
            ratio = rows["ours"]["time_ms"] / rows["pyapr"]["time_ms"]
            ratio_median = rows["ours"]["time_median_ms"] / rows["pyapr"]["time_median_ms"]
            for tool in ("ours", "pyapr"):
                x = rows[tool]
                lines.append(f"| {r['image']} | {shape} {r['dtype']} | {mode} | {tool} | {x['particles']:,} | "
                             f"{x['cr']:.2f} | {x['err_mean']:.3f} | {x['err_max']:.1f} | {x['time_ms']:.1f} | "
                             f"{x['time_median_ms']:.1f} | {ratio:.2f} | {ratio_median:.2f} | {x['peak_mib']:.0f} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--peak", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and no 4096^2 size")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.peak:
        print(json.dumps(peak_worker(json.loads(args.peak))))
        return
    try:
        import pyapr  # noqa: F401
    except ImportError:
        sys.exit("pyapr is needed for this benchmark: .venv/bin/pip install pyapr==1.0.7")
    rep = 3 if args.quick else 7
    t = args.threads
    main_results = []
    for name, r in (("blobs2d", rep), ("blobs3d", max(2, rep // 2)), ("photo", rep)):
        print(f"[bench] {name} ({t} threads)", flush=True)
        main_results.append(run_worker({"image": name, "repeats": r, "modes": ["explicit", "auto"]}, t))
    sizes = [512, 1024, 2048] + ([] if args.quick else [4096])
    size_results = []
    for side in sizes:
        print(f"[bench] size {side}", flush=True)
        size_results.append(run_worker({"image": f"blobs2d_{side}", "repeats": rep, "modes": ["explicit"],
                                        "quality": True}, t))
    thread_results = []
    for threads in (1, 2):
        for name in ("blobs2d", "blobs3d"):
            print(f"[bench] {name} threads={threads}", flush=True)
            thread_results.append(run_worker({"image": name, "repeats": max(2, rep // 2), "modes": ["explicit"],
                                              "quality": False}, threads))

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import pyapr
    lines = ["# APR conversion: napari-aprnet vs pyapr", "",
             f"Machine: {cpu}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}; "
             f"pyapr {pyapr.__version__}. Command: `.venv/bin/python benchmarks/bench_convert.py"
             f"{' --quick' if args.quick else ''}`.",
             f"Threads: {t} (OMP_NUM_THREADS) unless stated. Times are minima of repeated conversions in one "
             "process, the two tools alternating; ratio = ours / pyapr (< 1: ours faster). Errors are of the "
             "piecewise-constant reconstruction against the input, in input units. Peak memory = VmHWM minus the "
             "RSS before one conversion in a fresh process (C allocations included).", "",
             "pyapr's automatic thresholds (sigma_th, grad_th), reused as the explicit parameters of both tools: " +
             ", ".join(f"{r['image']} ({r['pyapr_auto'][0]:.2f}, {r['pyapr_auto'][1]:.2f})" for r in main_results),
             "", "## Images", ""]
    lines += fmt_main(main_results)
    lines += ["", "## Time vs image size (2D blobs, explicit thresholds)", "",
              "| side | pixels | ours particles | pyapr particles | ours (ms) | pyapr (ms) | ours/pyapr |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in size_results:
        rows = {x["tool"]: x for x in r["rows"]}
        n = int(np.prod(r["shape"]))
        lines.append(f"| {r['shape'][0]} | {n:,} | {rows['ours']['particles']:,} | {rows['pyapr']['particles']:,} | "
                     f"{rows['ours']['time_ms']:.1f} | {rows['pyapr']['time_ms']:.1f} | "
                     f"{rows['ours']['time_ms'] / rows['pyapr']['time_ms']:.2f} |")
    lines += ["", "## Threads (explicit thresholds)", "",
              "| image | threads | ours (ms) | pyapr (ms) | ours/pyapr | ours peak (MiB) | pyapr peak (MiB) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in thread_results:
        rows = {x["tool"]: x for x in r["rows"]}
        lines.append(f"| {r['image']} | {r['threads']} | {rows['ours']['time_ms']:.1f} | {rows['pyapr']['time_ms']:.1f} | "
                     f"{rows['ours']['time_ms'] / rows['pyapr']['time_ms']:.2f} | {rows['ours']['peak_mib']:.0f} | "
                     f"{rows['pyapr']['peak_mib']:.0f} |")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    tmp = RESULTS + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, RESULTS)
    print(text)


if __name__ == "__main__":
    main()
