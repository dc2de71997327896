"""Thesis 4.1.3 at laptop scale: APR_B vs Pix_B streaming (Table 4.2) and APR_A learning curves (Fig. 4.3).

Scale (defaults; the thesis used 3000 batches of 36 images of 256x256):
``--size 128`` generated images, ``--batch 12``, ``--steps 60`` for Table 4.2,
``--curve-steps 60`` for the learning curves, errors over the last ``--window 20``
batches. Step times include everything a training step does: image
generation, APR conversion (in this process, ``workers=0``), forward,
backward, optimizer step. Run:

    .venv/bin/python benchmarks/bench_training.py [--size 256 --batch 36 --steps 300]

Writes benchmarks/results/training.md and benchmarks/results/learning_curves.png.
"""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
import torch

from napari_aprnet.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"


def run(model: str, steps: int, batch: int, size: int, image_size: int, rel_error: float = 0.1, seed: int = 0,
        window: int = 20, lr: float = 5e-4):
    cfg = TrainConfig(model=model, steps=steps, batch_size=batch, size=size, image_size=image_size,
                      rel_error=rel_error, seed=seed, last_window=window, lr=lr)
    times, errors, losses = [], [], []
    for ev in train(cfg, None):
        if ev.phase == "train":
            times.append(ev.step_time)
            errors.append(1 - ev.accuracy)
            losses.append(ev.loss)
    steady = times[2:] if len(times) > 4 else times
    last = np.asarray(errors[-window:])
    return {"step_s": float(np.median(steady)), "err_mean": float(last.mean()), "err_std": float(last.std()),
            "errors": errors, "losses": losses}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--curve-steps", type=int, default=60)
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--skip-curves", action="store_true")
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    S, B = args.size, args.batch
    rows = []
    for e in (0.1, 0.4, 0.6, 0.8):
        r = run("APR_B", args.steps, B, S, S, rel_error=e, window=args.window)
        rows.append((f"APR E = {e}", r))
        print(rows[-1][0], f"{r['step_s']:.2f} s/step  error {r['err_mean']:.3f} +- {r['err_std']:.3f}", flush=True)
    for s in (S, S // 2, S // 4):
        r = run("Pix_B", args.steps, B, s, S, window=args.window)
        rows.append((f"Pixels {s}x{s}", r))
        print(rows[-1][0], f"{r['step_s']:.2f} s/step  error {r['err_mean']:.3f} +- {r['err_std']:.3f}", flush=True)
    apr01 = rows[0][1]
    pix = rows[4][1]
    ratio = pix["step_s"] / apr01["step_s"]

    lines = [
        "# Training benchmark (thesis 4.1.3, Table 4.2 and Figure 4.3, reduced scale)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {threads}, "
        f"torch {torch.__version__}. Command: `.venv/bin/python benchmarks/bench_training.py "
        f"--size {S} --batch {B} --steps {args.steps} --curve-steps {args.curve_steps} --window {args.window}`.",
        "",
        f"Scale: {S}x{S} generated images (thesis 256), batches of {B} (thesis 36), {args.steps} steps "
        f"(thesis 3000), error over the last {args.window} batches (thesis 100). Adam lr 5e-4, cross entropy, "
        "streaming shapes. Step time = median wall time of a training step including image generation and "
        "APR conversion (in-process), forward, backward and optimizer step.",
        "",
        "| data | step time (s) | error (last batches) |",
        "|---|---|---|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {r['step_s']:.3f} | {r['err_mean']:.3f} +- {r['err_std']:.3f} |")
    lines += ["", f"Pix_B step / APR_B (E = 0.1) step: **{ratio:.2f}x** (floor asked: >= 5x, with no worse error; "
              f"APR error {apr01['err_mean']:.3f} vs pixels {pix['err_mean']:.3f}).", ""]

    if not args.skip_curves:
        curves = {}
        for name in ("APR_A", "APR_A-same", "APR_A-close", "Pix_A"):
            r = run(name, args.curve_steps, B, S, S, window=args.window)
            curves[name] = r
            print(name, f"{r['step_s']:.2f} s/step  error {r['err_mean']:.3f}", flush=True)
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        k = max(1, args.curve_steps // 20)
        for name, r in curves.items():
            acc = 1 - np.convolve(r["errors"], np.ones(k) / k, mode="valid")
            ax[0].plot(np.arange(len(acc)) + k, acc, label=name)
            ax[1].plot(np.convolve(r["losses"], np.ones(k) / k, mode="valid"), label=name)
        ax[0].set(xlabel="batch", ylabel=f"training accuracy (running mean of {k})")
        ax[1].set(xlabel="batch", ylabel="training loss")
        ax[0].legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "learning_curves.png", dpi=80)
        lines += ["## Learning curves (Figure 4.3)", "", "![learning curves](learning_curves.png)", "",
                  "| network | step time (s) | error (last batches) |", "|---|---|---|"]
        for name, r in curves.items():
            lines.append(f"| {name} | {r['step_s']:.3f} | {r['err_mean']:.3f} +- {r['err_std']:.3f} |")
    tmp = RESULTS / ".training.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, RESULTS / "training.md")
    print((RESULTS / "training.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
