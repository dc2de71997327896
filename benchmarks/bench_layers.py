"""Benchmark: APR layers vs torch pixel layers on the same images (not a test).

Run:  .venv/bin/python benchmarks/bench_layers.py [--quick] [--threads 2] [--device cuda]

Prints tables and writes benchmarks/results/layers.md (layers_cuda.md with
``--device cuda``: APR layers with torch ops on the GPU vs cuDNN's
Conv2d/Conv3d and torch's pooling, every call timed with the GPU
synchronised; plan building stays on the host and is timed apart). Every ratio compares
timings taken in the same run. Structures come from ``APR.from_image`` when
the formation code is available, otherwise from a simple stand-in (cells
refined towards image edges, see ``_fallback_structure``); the table says which.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np


def _parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller batch / fewer repeats")
    ap.add_argument("--no-3d", action="store_true")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="keep glibc's default mmap threshold (large buffers page-faulted on every call)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", default=None, help="default benchmarks/results/layers.md (layers_cuda.md on cuda)")
    args = ap.parse_args()
    if args.out is None:
        args.out = os.path.join(os.path.dirname(__file__), "results",
                                "layers_cuda.md" if args.device == "cuda" else "layers.md")
    return args


ARGS = _parse()
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))


def _tune_malloc() -> bool:
    """Let glibc reuse freed large blocks (torch's CPU allocator does not cache). Applies to APR and pixel layers
    alike; on the VM these numbers were taken on, first-touch page faults of fresh 100 MB buffers from two
    threads otherwise dominate and vary with the machine's load."""
    if ARGS.no_malloc_tuning or not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 30)) and bool(libc.mallopt(-1, (1 << 31) - 1))  # MMAP_, TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


MALLOC_TUNED = _tune_malloc()

import torch  # noqa: E402
from torch import nn  # noqa: E402

from napari_aprnet import _native  # noqa: E402
from napari_aprnet.nn import APRBatch, APRConv, APRMaxPool  # noqa: E402
from napari_aprnet.nn._plans import conv_plan, pool_plan  # noqa: E402
from napari_aprnet.structure import APRStructure, level_max_for_shape, level_shape  # noqa: E402

torch.set_num_threads(ARGS.threads)
_native.set_num_threads(ARGS.threads)
DEVICE = torch.device(ARGS.device)
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise SystemExit("--device cuda: torch sees no CUDA device")


def _sync() -> None:
    """Wait for the GPU's queued work, so that host timers measure it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


# ----- images and structures ------------------------------------------------------------------

def shape_images(n: int, size: int = 256) -> list[np.ndarray]:
    """Object contours on a constant background (thesis synthetic shapes)."""
    try:
        from napari_aprnet.data.shapes import random_shape
        rng = np.random.default_rng(0)
        return [random_shape(rng, i % 6, size)[0].astype(np.float32) for i in range(n)]
    except Exception:  # pragma: no cover - stand-in generator
        rng = np.random.default_rng(0)
        out = []
        yy, xx = np.mgrid[:size, :size]
        for _ in range(n):
            cy, cx, r = rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size, rng.uniform(0.1, 0.25) * size
            img = np.full((size, size), rng.uniform(0, 0.5), np.float32)
            img[np.abs(np.hypot(yy - cy, xx - cx) - r) < 0.7] = rng.uniform(0.6, 1)
            out.append(img)
        return out


def natural_images(n: int, size: int = 256) -> list[np.ndarray]:
    """Random crops of scikit-image's 512x512 "camera" photograph."""
    from napari_aprnet.samples import natural_photo
    photo = natural_photo().astype(np.float32) / 255
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, photo.shape[0] - size + 1), rng.integers(0, photo.shape[1] - size + 1)
        out.append(np.ascontiguousarray(photo[y:y + size, x:x + size]))
    return out


def _fallback_structure(img: np.ndarray, spread: float) -> APRStructure:
    """Stand-in APR: pixel cells at intensity edges, cells grow 2x per `spread` pixels of distance."""
    from scipy import ndimage
    g = np.sqrt(sum(np.square(np.gradient(img, axis=a)) for a in range(img.ndim)))
    edges = g > 0.02
    dist = ndimage.distance_transform_edt(~edges) if edges.any() else np.full(img.shape, 1e9)
    lmax = level_max_for_shape(img.shape)
    req = (lmax - np.floor(np.log2(1 + dist / spread))).clip(0, lmax)
    levels, coords = [], []
    cells = np.zeros((1, img.ndim), np.int64)
    bits = np.array(np.meshgrid(*[[0, 1]] * img.ndim, indexing="ij")).reshape(img.ndim, -1).T
    for level in range(lmax + 1):
        step = 1 << (lmax - level)
        need = ndimage.maximum_filter(req, size=step, origin=-(step // 2) if step > 1 else 0,
                                      mode="nearest")[tuple(slice(0, None, step) for _ in img.shape)]
        split = need[tuple(cells.T)] > level if level < lmax else np.zeros(len(cells), bool)
        levels.append(np.full((~split).sum(), level, np.uint8))
        coords.append(cells[~split])
        if level == lmax:
            break
        kids = (cells[split][:, None] * 2 + bits[None]).reshape(-1, img.ndim)
        cells = kids[np.all(kids < np.array(level_shape(img.shape, lmax, level + 1)), axis=1)]
    return APRStructure.from_unsorted(img.shape, lmax, np.concatenate(levels), np.concatenate(coords))


def make_structures(images, params: dict, spread: float):
    """(structures, source): APR.from_image(image scaled to [0, 1], **params) when available, else the stand-in."""
    images = [(im - im.min()) / max(float(im.max() - im.min()), 1e-12) for im in images]
    try:
        from napari_aprnet import APR
        aprs = [APR.from_image(im, **params) for im in images]
        desc = ", ".join(f"{k}={v}" for k, v in params.items())
        return [a.structure for a in aprs], f"APR.from_image({desc})"
    except ImportError:
        return [_fallback_structure(im, spread) for im in images], f"stand-in (spread={spread})"


# ----- timing helpers ---------------------------------------------------------------------------

def interleaved(fns: dict, repeat: int) -> dict:
    """Best time of each callable, running them round-robin so that they share the machine's load."""
    for fn in fns.values():
        fn()  # warm-up (plans, allocator, cuDNN algorithm choice)
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            _sync()
            t = time.perf_counter()
            fn()
            _sync()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def cpu_times(fns: dict, repeat: int) -> dict:
    """Best process CPU time of each callable (meaningful with one thread: independent of machine load)."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.process_time()
            fn()
            best[k] = min(best[k], time.process_time() - t)
    return best


def saved_bytes(fn) -> int:
    """Bytes of tensors autograd keeps for backward during fn() (parameters excluded)."""
    total = [0]
    seen = set()

    def pack(t):
        if not isinstance(t, nn.Parameter) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return total[0]


def _fwd_and_fwdbwd(module, x, wrap):
    """Callables: inference forward (no_grad) and forward + backward w.r.t. input and weights."""
    xg = x.clone().requires_grad_()

    def fwd():
        with torch.no_grad():
            return module(wrap(x))

    def fwdbwd():
        y = module(wrap(xg))
        y = y.features if isinstance(y, APRBatch) else y
        y.backward(torch.ones_like(y))

    def forward_for_memory():
        y = module(wrap(xg))
        return y.features if isinstance(y, APRBatch) else y

    return fwd, fwdbwd, forward_for_memory


def apr_conv_case(structures, c_in, c_out, k, n_lk, ndim=2):
    """Structure/plan build times and the callables of APRConv on the batch of structures."""
    torch.manual_seed(0)
    n = sum(s.n_particles for s in structures)
    x = torch.randn(n, c_in).to(DEVICE)
    conv = APRConv(c_in, c_out, k, n_level_kernels=n_lk, ndim=ndim).to(DEVICE)
    batch = APRBatch(x, structures)
    t0 = time.perf_counter()
    conv_plan(batch, k, n_lk)
    _sync()
    t_plan = time.perf_counter() - t0
    fwd, fwdbwd, mem_fn = _fwd_and_fwdbwd(conv, x, batch.with_features)
    return dict(n=n, t_plan=t_plan, mem=saved_bytes(mem_fn)), fwd, fwdbwd


def pixel_conv_case(shape, batch, c_in, c_out, k):
    torch.manual_seed(0)
    layer = (nn.Conv2d if len(shape) == 2 else nn.Conv3d)(c_in, c_out, k, padding=k // 2).to(DEVICE)
    x = torch.randn(batch, c_in, *shape).to(DEVICE)
    fwd, fwdbwd, mem_fn = _fwd_and_fwdbwd(layer, x, lambda t: t)
    return dict(mem=saved_bytes(mem_fn)), fwd, fwdbwd


def apr_pool_case(structures, c):
    x = torch.randn(sum(s.n_particles for s in structures), c).to(DEVICE)
    batch = APRBatch(x, structures)
    t0 = time.perf_counter()
    pool_plan(batch)
    _sync()
    t_plan = time.perf_counter() - t0
    fwd, fwdbwd, _ = _fwd_and_fwdbwd(APRMaxPool(), x, batch.with_features)
    return dict(t_plan=t_plan), fwd, fwdbwd


def pixel_pool_case(shape, batch, c):
    x = torch.randn(batch, c, *shape).to(DEVICE)
    fwd, fwdbwd, _ = _fwd_and_fwdbwd(nn.MaxPool2d(2) if len(shape) == 2 else nn.MaxPool3d(2), x, lambda t: t)
    return {}, fwd, fwdbwd


def compare(apr_case, pixel_case, repeat):
    """Run APR and pixel callables interleaved; returns merged info with times."""
    info_a, fa, ba = apr_case
    info_p, fp, bp = pixel_case
    t = interleaved({"a_fwd": fa, "p_fwd": fp, "a_fwdbwd": ba, "p_fwdbwd": bp}, repeat)
    return dict(info_a, pixel_mem=info_p.get("mem", 0), **t)


# ----- main ----------------------------------------------------------------------------------------

def ms(t):
    return f"{1e3 * t:.1f}"


def mib(b):
    return f"{b / 2**20:.1f}"


def main():
    batch = 4 if ARGS.quick else 16
    repeat = 3 if ARGS.quick else 5
    size = 256
    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    if DEVICE.type == "cuda":
        out(f"# APR layers (torch ops on the GPU) vs cuDNN layers on {torch.cuda.get_device_name(DEVICE)}")
        out()
        out(f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; every call timed with the GPU "
            "synchronised. The plans (C, host, copied to the GPU) are timed apart in the plan column.")
    else:
        out("# APR layers vs pixel layers")
    out()
    out(f"Machine: {platform.machine()}, {os.cpu_count()} cores; threads: torch {torch.get_num_threads()}, "
        f"OpenMP {_native.max_threads()}; torch {torch.__version__}; batch {batch}, {size}x{size}, float32; "
        f"best of {repeat}, APR and pixel runs interleaved. fwd = inference forward (no_grad); "
        "fwd+bwd = forward + backward for input, weights and bias. Speed-up = pixel time / APR time. "
        f"glibc malloc tuned to reuse large blocks (both layers): {MALLOC_TUNED}.")
    out()

    shapes_params = dict(rel_error=0.4, sigma_th=0.5, grad_th=0.05)
    datasets = {
        "shapes": (shape_images(batch, size), shapes_params, 1.0),
        "natural": (natural_images(batch, size), dict(auto_parameters=True), 0.25),
        "natural, dense": (natural_images(batch, size), dict(rel_error=0.1, grad_th=0.01), 0.1),
    }
    cases = [("32->32 k=3, 1 kernel", 32, 32, 3, 1), ("1->32 k=11, 5 kernels", 1, 32, 11, 5)]
    out("## Convolution (2D)")
    out()
    out("| data | structures | CR | layer | APR fwd ms | Conv2d fwd ms | speed-up fwd | APR fwd+bwd ms | "
        "Conv2d fwd+bwd ms | speed-up fwd+bwd | plan ms (maps, rulebook and tree of the whole batch) | saved for backward MiB "
        "APR / pixel |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|")
    structs = {}
    for dname, (images, params, spread) in datasets.items():
        ss, src = make_structures(images, params, spread)
        structs[dname] = ss
        cr = batch * size * size / sum(s.n_particles for s in ss)
        for name, ci, co, k, nlk in cases:
            r = compare(apr_conv_case(ss, ci, co, k, nlk), pixel_conv_case((size, size), batch, ci, co, k), repeat)
            out(f"| {dname} | {src} | {cr:.1f} | {name} | {ms(r['a_fwd'])} | {ms(r['p_fwd'])} | "
                f"{r['p_fwd'] / r['a_fwd']:.2f}x | {ms(r['a_fwdbwd'])} | {ms(r['p_fwdbwd'])} | "
                f"{r['p_fwdbwd'] / r['a_fwdbwd']:.2f}x | {ms(r['t_plan'])} | "
                f"{mib(r['mem'])} / {mib(r['pixel_mem'])} |")
    out()
    out("Rulebook time is paid once per structure (cached on it) plus once per batch (shared by all layers "
        "with the same kernel size); it is not included in the layer times.")
    out()

    out("## Max pooling (2D, 32 channels)")
    out()
    out("| data | CR | APR fwd ms | MaxPool2d fwd ms | speed-up | APR fwd+bwd ms | MaxPool2d fwd+bwd ms | speed-up "
        "| plan ms |")
    out("|---|---|---|---|---|---|---|---|---|")
    for dname, ss in structs.items():
        cr = batch * size * size / sum(s.n_particles for s in ss)
        r = compare(apr_pool_case(ss, 32), pixel_pool_case((size, size), batch, 32), repeat)
        out(f"| {dname} | {cr:.1f} | {ms(r['a_fwd'])} | {ms(r['p_fwd'])} | {r['p_fwd'] / r['a_fwd']:.2f}x | "
            f"{ms(r['a_fwdbwd'])} | {ms(r['p_fwdbwd'])} | {r['p_fwdbwd'] / r['a_fwdbwd']:.2f}x | "
            f"{ms(r['t_plan'])} |")
    out()

    out("## Time per particle vs density (32->32 k=3, shapes images)")
    out()
    out("| structures | particles | CR | APR fwd+bwd ms | ns / particle | Conv2d fwd+bwd ms | speed-up |")
    out("|---|---|---|---|---|---|---|")
    images = datasets["shapes"][0]
    for params, spread in [(shapes_params, 0.5), (dict(rel_error=0.2, sigma_th=0.2, grad_th=0.02), 2.0),
                           (dict(rel_error=0.1, sigma_th=0.05, grad_th=0.01), 8.0), (dict(rel_error=0.05), 32.0)]:
        ss, src = make_structures(images, params, spread)
        r = compare(apr_conv_case(ss, 32, 32, 3, 1), pixel_conv_case((size, size), batch, 32, 32, 3), repeat)
        cr = batch * size * size / r["n"]
        out(f"| {src} | {r['n']} | {cr:.1f} | {ms(r['a_fwdbwd'])} | {1e9 * r['a_fwdbwd'] / r['n']:.0f} | "
            f"{ms(r['p_fwdbwd'])} | {r['p_fwdbwd'] / r['a_fwdbwd']:.2f}x |")
    out()

    if not ARGS.no_3d:
        shape3 = (32, 128, 128) if ARGS.quick else (64, 256, 256)
        b3 = 1
        out(f"## 3D convolution 32->32 k=3, {shape3}, batch {b3} (fluorescence blobs sample)")
        out()
        out("| structures | CR | APR fwd ms | Conv3d fwd ms | speed-up | APR fwd+bwd ms | Conv3d fwd+bwd ms | "
            "speed-up | plan ms | saved for backward MiB APR / pixel |")
        out("|---|---|---|---|---|---|---|---|---|---|")
        from napari_aprnet.samples import fluorescence_blobs
        vol = fluorescence_blobs(shape3, 40).astype(np.float32)
        ss, src = make_structures([vol], dict(auto_parameters=True), 2.0)
        r = compare(apr_conv_case(ss, 32, 32, 3, 1, ndim=3), pixel_conv_case(shape3, b3, 32, 32, 3), 2)
        cr = np.prod(shape3) / r["n"]
        out(f"| {src} | {cr:.1f} | {ms(r['a_fwd'])} | {ms(r['p_fwd'])} | {r['p_fwd'] / r['a_fwd']:.2f}x | "
            f"{ms(r['a_fwdbwd'])} | {ms(r['p_fwdbwd'])} | {r['p_fwdbwd'] / r['a_fwdbwd']:.2f}x | "
            f"{ms(r['t_plan'])} | {mib(r['mem'])} / {mib(r['pixel_mem'])} |")
        out()

    if DEVICE.type == "cuda":  # process CPU time says nothing about GPU work
        _write(lines)
        return
    out("## Load-independent check: 1 thread, process CPU time (2D convolution)")
    out()
    out("The machine these numbers come from is shared; wall-clock ratios above move with the load. With one "
        "thread, process CPU time measures the work itself.")
    out()
    out("| data | CR | layer | APR fwd ms | Conv2d fwd ms | speed-up fwd | APR fwd+bwd ms | Conv2d fwd+bwd ms | "
        "speed-up fwd+bwd |")
    out("|---|---|---|---|---|---|---|---|---|")
    torch.set_num_threads(1)
    _native.set_num_threads(1)
    for dname, ss in structs.items():
        cr = batch * size * size / sum(s.n_particles for s in ss)
        for name, ci, co, k, nlk in cases:
            _, fa, ba = apr_conv_case(ss, ci, co, k, nlk)
            _, fp, bp = pixel_conv_case((size, size), batch, ci, co, k)
            r = cpu_times({"a_fwd": fa, "p_fwd": fp, "a_fwdbwd": ba, "p_fwdbwd": bp}, repeat)
            out(f"| {dname} | {cr:.1f} | {name} | {ms(r['a_fwd'])} | {ms(r['p_fwd'])} | "
                f"{r['p_fwd'] / r['a_fwd']:.2f}x | {ms(r['a_fwdbwd'])} | {ms(r['p_fwdbwd'])} | "
                f"{r['p_fwdbwd'] / r['a_fwdbwd']:.2f}x |")
    torch.set_num_threads(ARGS.threads)
    _native.set_num_threads(ARGS.threads)
    out()
    _write(lines)


def _write(lines) -> None:
    os.makedirs(os.path.dirname(ARGS.out), exist_ok=True)
    tmp = ARGS.out + ".tmp"
    with open(tmp, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, ARGS.out)
    print(f"wrote {ARGS.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
