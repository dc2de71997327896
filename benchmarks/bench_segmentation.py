"""Benchmark: APR_UNet vs Pix_UNet segmentation of synthetic nuclei (not a test).

Run:  .venv/bin/python benchmarks/bench_segmentation.py [--steps 300] [--threads 2] [--cases 2d128,2d256,3d]

For every case (nuclei2d 128x128 and 256x256, nuclei3d 64x128x128, and
nuclei3d with sparse nuclei, 3-8 % of the volume) and both networks, in one run:

1. *Learning*: the same training loop as ``aprnet train --task segment``
   (streaming: every batch is fresh, so the APR net converts every image;
   ``NAME@pixels`` in ``--models`` weights each particle's loss by its
   cell's pixels instead of counting it once, the default),
   the same number of steps, batch size, learning rate and seed for both
   networks; then foreground IoU, Dice and object F1 at IoU 0.5 on
   ``--eval-n`` fresh test images (the run's test set). Runs are saved under
   ``--out`` (``out/`` is git-ignored) and resumed when the script is run
   again; finished runs are not repeated.
2. *Speed and memory*: in a fresh process per network, ``--time-steps``
   training steps on pre-generated images (median after one warm-up); a
   step = per-image preparation, APR conversion and per-particle targets
   (APR) or the pixel tensor (pixels), forward, loss, backward, Adam step.
   Peak memory: the process's peak RSS during those steps minus its RSS
   before them (``/proc/self/status`` VmHWM after resetting it). With
   ``--repeats R`` the timing processes of a case run R times, the networks
   taking turns (A, B, A, B, ...), so that a slow spell of the machine hits
   both; the table gives the median step time and the median, lowest and
   highest of the R paired speed ratios.

The table goes to ``benchmarks/results/segmentation.md`` with the machine,
thread count, command and the issue's goals checked: APR_UNet IoU within
0.02 of Pix_UNet and >= 0.8 after 300 steps at 128x128; an APR_UNet step at
least CR/3 times faster than a Pix_UNet step on nuclei3d where CR >= 10.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name: data, image shape, batch size, NucleiParams overrides
CASES = {"2d128": ("nuclei2d", (128, 128), 8, None), "2d256": ("nuclei2d", (256, 256), 4, None),
         "3d": ("nuclei3d", (64, 128, 128), 2, None),
         "3d_sparse": ("nuclei3d", (64, 128, 128), 2, {"coverage": [0.03, 0.08]}),
         "3d_sparser": ("nuclei3d", (64, 128, 128), 2, {"coverage": [0.01, 0.03]})}
MODELS = ("APR_UNet", "Pix_UNet")


def _parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps per network and case")
    ap.add_argument("--steps-3d", type=int, default=None,
                    help="training steps of the 3D cases (default: --steps; a 3D Pix_UNet step is ~16 s on 1 core)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma-separated networks; NAME@pixels weights each particle's loss by its cell's pixels "
                         "(TrainConfig.loss_weighting; default: each particle counts once)")
    ap.add_argument("--width", type=int, default=None, help="U-Net first-stage channels (default: the model's)")
    ap.add_argument("--depth", type=int, default=None, help="U-Net depth (default: the model's)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rel-error", type=float, default=0.2)
    ap.add_argument("--apr-params", default='{"auto_parameters": true}',
                    help="other APRParameters fields as JSON (default: automatic sigma_th and grad_th, as the "
                         "Convert widget); '{}' for the plain defaults")
    ap.add_argument("--eval-n", type=int, default=20, help="fresh test images per case")
    ap.add_argument("--time-steps", type=int, default=5, help="timed steps per network (median)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="timing processes per network and case, the networks taking turns (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/bench_segmentation", help="run folders (resumable)")
    ap.add_argument("--table", default=str(HERE / "results" / "segmentation.md"))
    ap.add_argument("--time-worker", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


ARGS = _parse()
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _memory import reset_peak, status_kib  # noqa: E402

from napari_aprnet import _native  # noqa: E402
from napari_aprnet.data import make_loader  # noqa: E402
from napari_aprnet.training import TrainConfig, run_training  # noqa: E402
from napari_aprnet.training.checkpoint import load_checkpoint  # noqa: E402
from napari_aprnet.training.data_setup import _setup_data  # noqa: E402
from napari_aprnet.training.loop import build_network  # noqa: E402
from napari_aprnet.training.tasks import task_for  # noqa: E402

torch.set_num_threads(ARGS.threads)
_native.set_num_threads(ARGS.threads)


def _config(case: str, model: str, steps: int) -> TrainConfig:
    data, shape, batch, nuclei = CASES[case]
    model, _, weighting = model.partition("@")
    return TrainConfig(model=model, task="segment", **({"loss_weighting": weighting} if weighting else {}), data=data, image_shape=list(shape), nuclei_params=nuclei,
                       steps=steps, batch_size=batch, lr=ARGS.lr, rel_error=ARGS.rel_error,
                       apr_params=json.loads(ARGS.apr_params) or None, width=ARGS.width, depth=ARGS.depth,
                       seed=ARGS.seed, n_test=ARGS.eval_n, checkpoint_every=25)


def _run_settings(config: dict) -> dict:
    """What makes two runs the same: a stored or new run's settings, with fields added to TrainConfig since then at
    their defaults and every default filled in as training fills it (a checkpoint stores them filled), without
    the length, the worker count and, for pixel networks (one pixel per "particle"), the loss weighting."""
    given = {k: v for k, v in config.items() if v is not None}
    complete = TrainConfig.from_dict({**given, "steps": 1}).validate()
    settings = {**complete.to_dict(), "steps": None, "workers": None}
    if not settings["model"].startswith("APR"):
        settings["loss_weighting"] = None
    return settings


def _steps(case: str) -> int:
    """Training steps of ``case``: ``--steps-3d`` for the 3D cases when given, else ``--steps``."""
    return ARGS.steps_3d if ARGS.steps_3d is not None and len(CASES[case][1]) == 3 else ARGS.steps


# ----- learning -------------------------------------------------------------------------

def learn(case: str, model: str) -> dict:
    """Train (or resume) one run and return its test measures (cached in result.json)."""
    out = Path(ARGS.out) / f"{case}_{model}"
    result = out / "result.json"
    steps = _steps(case)
    config = _config(case, model, steps)
    same_run = _run_settings(config.to_dict())
    if result.is_file():
        stored = json.loads(result.read_text())
        if stored.get("steps") == steps and stored.get("config") and _run_settings(stored["config"]) == same_run:
            return stored
    resume = (out / "checkpoint.pt").is_file()
    if resume:
        train_state = load_checkpoint(out / "checkpoint.pt")["train"]
        stored_config = _run_settings(train_state["config"])
        if stored_config != same_run or int(train_state["step"]) > steps:
            raise SystemExit(f"{out} holds another run (other settings, or more than {steps} steps); "
                             "use another --out")
    t0 = time.perf_counter()
    last = run_training(config, out, resume=resume)
    test = last.metrics["test"]
    res = {"steps": last.step, "iou": test["iou"], "dice": test["dice"], "f1": test["f1"],
           "train_seconds": time.perf_counter() - t0, "config": same_run}
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, result)
    return res


# ----- speed and memory (worker side) -------------------------------------------------

def time_worker(case: str, model: str) -> dict:
    """Median training-step time and peak memory of one network, in this (fresh) process."""
    config = _config(case, model, 1).validate()
    data = _setup_data(config)
    task = task_for("segment", len(data.class_names))
    torch.manual_seed(0)
    net = build_network(config, data.spec, len(data.class_names)).train()
    opt = torch.optim.Adam(net.parameters(), lr=ARGS.lr)
    batch = config.batch_size
    n = ARGS.time_steps + 1
    source = [data.train.image(i) for i in range(n * batch)]  # generated before timing
    batches = [list(range(k * batch, (k + 1) * batch)) for k in range(n)]
    loader = iter(make_loader(source, data.spec, batches, targets=task.targets, item_target=task.item_target))
    reset_peak()
    base = status_kib("VmRSS:")
    times, converts, ratios = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        b = next(loader)
        t1 = time.perf_counter()
        loss = task.loss(net(b.inputs), b.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        converts.append(t1 - t0)
        if data.spec.mode == "apr":
            ratios.append(sum(s.n_pixels for s in b.inputs.structures) / int(b.inputs.offsets[-1]))
    peak = status_kib("VmHWM:")
    return {"step_s": statistics.median(times[1:]), "convert_s": statistics.median(converts[1:]),
            "peak_mib": (peak - base) / 1024, "cr": float(np.mean(ratios)) if ratios else 1.0}


def _summary(runs: list[dict]) -> dict:
    """Medians over the timing processes of one network, and every process's step time (``step_runs``)."""
    return {"step_s": statistics.median(r["step_s"] for r in runs),
            "convert_s": statistics.median(r["convert_s"] for r in runs),
            "peak_mib": statistics.median(r["peak_mib"] for r in runs), "cr": runs[0]["cr"],
            "step_runs": [r["step_s"] for r in runs]}


def _speedups(apr: dict, pix: dict) -> list[float]:
    """Pix_UNet / APR_UNet step time of every pair of timing processes that ran one after the other."""
    return [p / a for a, p in zip(apr["step_runs"], pix["step_runs"])]


def timed(case: str, model: str) -> dict:
    """:func:`time_worker` in a fresh subprocess (same arguments and thread count)."""
    cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--time-worker", f"{case}:{model}"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"timing worker failed for {case} {model}:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----- table ------------------------------------------------------------------------------

def _machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.processor() or platform.system()}; "
            f"torch {torch.__version__}; threads: torch {torch.get_num_threads()}, C library "
            f"{_native.max_threads()}")


def _goals(rows: dict) -> list[str]:
    lines = []
    a, p = rows.get(("2d128", "APR_UNet")), rows.get(("2d128", "Pix_UNet"))
    if a and p:
        ok = a["iou"] >= 0.8 and a["iou"] >= p["iou"] - 0.02
        lines.append(f"- nuclei2d 128x128 after {a['steps']} steps: APR_UNet IoU {a['iou']:.3f} vs Pix_UNet "
                     f"{p['iou']:.3f} (goal: >= 0.8 and within 0.02): **{'met' if ok else 'not met'}**"
                     f"{'' if ARGS.steps >= 300 else ' (a short run: the goal is for 300 steps)'}.")
    for case in (c for c in CASES if len(CASES[c][1]) == 3):
        a, p = rows.get((case, "APR_UNet")), rows.get((case, "Pix_UNet"))
        if a and p:
            speed = statistics.median(_speedups(a, p))
            target = a["cr"] / 3
            verdict = "CR < 10: the goal does not apply" if a["cr"] < 10 else (
                "met" if speed >= target else "not met")
            lines.append(f"- {case} step: APR_UNet {speed:.2f}x faster than Pix_UNet at CR {a['cr']:.1f} "
                         f"(goal: >= CR/3 = {target:.2f}x where CR >= 10): **{verdict}**.")
    return lines


def write_table(rows: dict, cases, models) -> str:
    cmd = ".venv/bin/python benchmarks/bench_segmentation.py " + " ".join(sys.argv[1:])
    lines = ["# Segmentation: APR_UNet vs Pix_UNet on synthetic nuclei", "",
             f"Machine: {_machine()}.", "",
             f"Command: `{cmd.strip()}`. Streaming training (fresh images every step), Adam lr {ARGS.lr}, "
             f"seed {ARGS.seed}, E = {ARGS.rel_error}, other APR parameters {ARGS.apr_params}, U-Net width "
             f"{ARGS.width or 'default'}, depth {ARGS.depth or 'default'}; IoU, Dice and object F1 (IoU 0.5) on "
             f"{ARGS.eval_n} fresh test images per case. Step time: median of {ARGS.time_steps} steps after a "
             "warm-up, conversion and targets included, images generated beforehand; peak memory: peak RSS of "
             "those steps above the RSS before them, in a fresh process per network; "
             f"{ARGS.repeats} such process(es) per network, the networks taking turns: medians, and for the "
             "speed-up the median (lowest-highest) of the paired ratios.", "",
             "| case | batch | network | steps | IoU | Dice | F1 | step (s) | of which conversion (s) | "
             "peak MiB | CR | Pix / APR step |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case in cases:
        data, shape, batch, nuclei = CASES[case]
        name = f"{data} {'x'.join(map(str, shape))}"
        if nuclei and "coverage" in nuclei:
            name += " sparse ({:g}-{:g} % covered)".format(*(100 * c for c in nuclei["coverage"]))
        for model in models:
            r = rows[(case, model)]
            ratio = ""
            if model == "APR_UNet" and (case, "Pix_UNet") in rows:
                speedups = _speedups(r, rows[(case, "Pix_UNet")])
                ratio = f"{statistics.median(speedups):.2f}x"
                if len(speedups) > 1:
                    ratio += f" ({min(speedups):.2f}-{max(speedups):.2f})"
            lines.append(f"| {name} | {batch} | {model} | {r['steps']} | "
                         f"{r['iou']:.3f} | {r['dice']:.3f} | {r['f1']:.3f} | {r['step_s']:.3f} | "
                         f"{r['convert_s']:.3f} | {r['peak_mib']:.0f} | "
                         f"{r['cr']:.1f} | {ratio} |")
    lines += ["", "Goals (issue 10):", ""] + _goals(rows)
    text = "\n".join(lines) + "\n"
    path = Path(ARGS.table)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return text


def main() -> None:
    if ARGS.time_worker:
        case, model = ARGS.time_worker.split(":")
        print(json.dumps(time_worker(case, model)))
        return
    cases = [c for c in ARGS.cases.split(",") if c]
    models = [m for m in ARGS.models.split(",") if m]
    if ARGS.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {ARGS.repeats}")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    rows = {}
    for case in cases:
        for model in models:
            rows[(case, model)] = learn(case, model)
        runs = {model: [] for model in models}
        for _ in range(ARGS.repeats):  # the networks take turns
            for model in models:
                runs[model].append(timed(case, model))
        for model in models:
            res = rows[(case, model)]
            res.update(_summary(runs[model]))
            print(f"{case} {model}: IoU {res['iou']:.3f}  Dice {res['dice']:.3f}  F1 {res['f1']:.3f}  "
                  f"step {res['step_s']:.3f} s  peak {res['peak_mib']:.0f} MiB  CR {res['cr']:.1f}", flush=True)
    print(write_table(rows, cases, models))


if __name__ == "__main__":
    main()
