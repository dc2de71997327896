"""Benchmark: one training step of APR_B vs Pix_B on fresh synthetic shapes (not a test).

Run:  .venv/bin/python benchmarks/bench_train_step.py [--steps 9] [--threads 2] [--size 256] [--batch 36]
      [--device cuda]

Every step draws a NEW batch of synthetic shapes (thesis 4.1.3.2, streaming
mode), so the APR net converts every image and rebuilds every index plan
("plan") of its layers; the pixel net gets the same images as a tensor. One
step = generate + (convert) + forward + backward + optimizer step, as in
``napari_aprnet.train``. The medians over ``--steps`` steps (after one
warm-up step per net) are printed with their breakdown and written to
benchmarks/results/train_step.md. "plans" is the time spent inside the layers'
plan builders (part of the forward pass; "forward" excludes it).

With ``--device cuda`` the networks run on the GPU (the pixel net with
cuDNN's Conv2d) and every part is timed with the GPU synchronised; image
generation, APR conversion and the plans (built in C on the host, then
copied to the GPU) stay on the CPU, so the table says whether they or the
GPU's compute bound the APR step (written to train_step_cuda.md).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time


def _parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=9, help="timed steps per network (median reported)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=36)
    ap.add_argument("--rel-error", type=float, default=0.1)
    ap.add_argument("--nets", default="APR_B,Pix_B")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="raise glibc's mmap/trim thresholds so freed large blocks are reused instead of "
                         "page-faulted afresh on every step (speeds up Pix_B a lot); default: glibc defaults")
    ap.add_argument("--out", default=None, help="markdown output (default benchmarks/results/train_step.md, "
                                                 "train_step_malloc_tuned.md with --tune-malloc)")
    args = ap.parse_args()
    if args.out is None:
        name = "train_step_malloc_tuned.md" if args.tune_malloc else "train_step.md"
        name = name.replace(".md", "_cuda.md") if args.device == "cuda" else name
        args.out = os.path.join(os.path.dirname(__file__), "results", name)
    return args


ARGS = _parse()
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))


def _tune_malloc() -> bool:
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 30)) and bool(libc.mallopt(-1, (1 << 31) - 1))  # M_MMAP_, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


MALLOC_TUNED = _tune_malloc() if ARGS.tune_malloc else False

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from napari_aprnet import APR, _native  # noqa: E402
from napari_aprnet.data import ShapeStream  # noqa: E402
from napari_aprnet.models import build_model  # noqa: E402
from napari_aprnet.nn import APRBatch  # noqa: E402
from napari_aprnet.nn import functional as aprf  # noqa: E402

torch.set_num_threads(ARGS.threads)
_native.set_num_threads(ARGS.threads)
DEVICE = torch.device(ARGS.device)
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise SystemExit("--device cuda: torch sees no CUDA device")


def _sync() -> None:
    """Wait for the GPU's queued work, so that host timers measure it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()

PARTS = ("generate", "convert", "plans", "forward", "backward", "optimizer")
_plan_time = [0.0]


def _timed(fn):
    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            _plan_time[0] += time.perf_counter() - t
    return wrapper


aprf.conv_plan = _timed(aprf.conv_plan)
aprf.pool_plan = _timed(aprf.pool_plan)


def run(name: str, steps: int) -> tuple[list[dict], dict]:
    torch.manual_seed(0)
    model = build_model(name, n_classes=6).to(DEVICE)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    stream = ShapeStream(seed=1, size=ARGS.size, batch=ARGS.batch)
    apr = name.startswith("APR")
    rows, info = [], {"particles": []}
    for i in range(steps + 1):
        r = dict.fromkeys(PARTS, 0.0)
        t0 = time.perf_counter()
        images, labels = stream.batch(i)
        labels = torch.as_tensor(labels).to(DEVICE)
        t1 = time.perf_counter()
        r["generate"] = t1 - t0
        if apr:
            aprs = [APR.from_image(im, rel_error=ARGS.rel_error) for im in images]
            x = APRBatch.from_aprs(aprs, device=DEVICE)
            info["particles"].append(int(x.offsets[-1]))
        else:
            x = torch.from_numpy(images[:, None]).to(DEVICE)
        _sync()
        t2 = time.perf_counter()
        r["convert"] = t2 - t1
        _plan_time[0] = 0.0
        logits = model(x)
        loss = F.cross_entropy(logits, labels)
        _sync()
        t3 = time.perf_counter()
        r["plans"] = _plan_time[0]
        r["forward"] = t3 - t2 - r["plans"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _sync()
        t4 = time.perf_counter()
        r["backward"] = t4 - t3
        opt.step()
        _sync()
        t5 = time.perf_counter()
        r["optimizer"] = t5 - t4
        r["total"] = t5 - t0
        if i > 0:  # the first step is a warm-up
            rows.append(r)
    return rows, info


def median(rows, key):
    return statistics.median(r[key] for r in rows)


def main():
    try:
        from threadpoolctl import threadpool_info
        pools = ", ".join(f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info())
    except Exception:  # pragma: no cover - optional
        pools = "threadpoolctl not available"
    nets = ARGS.nets.split(",")
    res = {}
    for name in nets:
        rows, info = run(name, ARGS.steps)
        res[name] = {k: median(rows, k) for k in PARTS + ("total",)}
        res[name]["min_total"] = min(r["total"] for r in rows)
        if info["particles"]:
            res[name]["particles"] = statistics.median(info["particles"])
        print(f"{name}: " + "  ".join(f"{k} {res[name][k] * 1e3:.1f} ms" for k in PARTS + ("total",)), flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.processor() or platform.system()}"
    where = "CPU" if DEVICE.type == "cpu" else f"GPU {torch.cuda.get_device_name(DEVICE)} (cuDNN {torch.backends.cudnn.version()})"
    lines = [f"# Training step: APR_B vs Pix_B (fresh shapes every step) on the {where}", "",
             f"Machine: {machine}; torch {torch.__version__}; threads: torch {torch.get_num_threads()}, "
             f"C library {_native.max_threads()}; thread pools: {pools}; glibc malloc: "
             f"{'mmap/trim thresholds raised (--tune-malloc)' if MALLOC_TUNED else 'defaults'}.", "",
             f"Batch {ARGS.batch} images of {ARGS.size}x{ARGS.size}, E = {ARGS.rel_error}, Adam; median of "
             f"{ARGS.steps} steps after one warm-up step, each step on a new batch (generation, conversion and "
             "all APR layer plans included). Command: `.venv/bin/python benchmarks/bench_train_step.py "
             f"--steps {ARGS.steps} --threads {ARGS.threads} --size {ARGS.size} --batch {ARGS.batch}"
             f"{' --tune-malloc' if MALLOC_TUNED else ''}{' --device cuda' if DEVICE.type == 'cuda' else ''}`.", "",
             "| part (median ms) | " + " | ".join(nets) + " |", "|---|" + "---:|" * len(nets)]
    for k in PARTS + ("total",):
        lines.append(f"| {k} | " + " | ".join(f"{res[n][k] * 1e3:.1f}" for n in nets) + " |")
    lines.append("| min total | " + " | ".join(f"{res[n]['min_total'] * 1e3:.1f}" for n in nets) + " |")
    if "APR_B" in res and "Pix_B" in res:
        ratio = res["Pix_B"]["total"] / res["APR_B"]["total"]
        lines += ["", f"Speed-up of a whole APR_B step over a Pix_B step (ratio of medians): **{ratio:.1f}x** "
                      f"(median {res['APR_B'].get('particles', 0):.0f} particles per batch vs "
                      f"{ARGS.batch * ARGS.size ** 2} pixels)."]
        print(f"ratio Pix_B / APR_B = {ratio:.2f}")
    for name in (n for n in nets if "particles" in res[n]):
        r = res[name]
        compute = r["forward"] + r["backward"] + r["optimizer"]
        host = max(("plans", "convert", "generate"), key=lambda k: r[k])
        verdict = (f"the {host} step on the host ({r[host] * 1e3:.1f} ms) bounds it" if r[host] > compute
                   else "the network's compute bounds it")
        lines += ["", f"{name} on the {DEVICE.type.upper()}: plan building (C, host) {r['plans'] * 1e3:.1f} ms, APR "
                      f"conversion {r['convert'] * 1e3:.1f} ms, forward + backward + optimizer {compute * 1e3:.1f} ms "
                      f"per step: {verdict}."]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(ARGS.out), exist_ok=True)
    tmp = ARGS.out + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, ARGS.out)
    print(text)


if __name__ == "__main__":
    main()
