"""Thesis 4.1.3 on this machine: Table 4.2, Figures 4.3/4.4 (learning curves) and Figure 4.6 (finite datasets).

Every run is a normal training run folder under ``--runs`` (checkpoint every
100 steps, ``log.csv``): rerunning a command resumes unfinished runs and
skips finished ones, so long benchmarks can run in the background across
sessions. ``report`` reads the run folders and rewrites the
part of ``benchmarks/results/training.md`` below its marker line (the
analysis above it is written by hand) and the PNG figures. Commands::

    PY=.venv/bin/python
    $PY benchmarks/bench_training.py table   --steps 3000 --pix256-steps 600   # Table 4.2
    $PY benchmarks/bench_training.py curves  --steps 1000 --pix256-steps 600   # Figures 4.3 / 4.4
    $PY benchmarks/bench_training.py finite  --size 128 --steps 600            # Figure 4.6
    $PY benchmarks/bench_training.py seeds   --steps 1000 --seeds 1 2         # APR_B at E = 0.1, other seeds
    $PY benchmarks/bench_training.py report

Settings are the thesis' (streaming shapes, 256x256 images, batch 36, Adam
lr 5e-4, cross entropy, E = 0.1 unless varied, seed 0); errors of Table 4.2
are the mean and standard deviation of the training-batch error over the
last 100 batches (each batch is fresh from the generator, so this is an
unbiased estimate of the generalisation error).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import torch

from napari_aprnet.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
WINDOW = 100
MARKER = "<!-- everything below is written by `benchmarks/bench_training.py report` -->"

#: Table 4.2 rows: run name -> (model, rel_error, network input side) with the thesis' numbers
TABLE = {
    "APR_B_E0.1": ("APR_B", 0.1, 256, "APR E = 0.1", 0.0013, 0.0015),
    "Pix_B_256": ("Pix_B", 0.1, 256, "Pixels 256x256", 0.0016, 0.0028),
    "APR_B_E0.4": ("APR_B", 0.4, 256, "APR E = 0.4", 0.0071, 0.0031),
    "APR_B_E0.6": ("APR_B", 0.6, 256, "APR E = 0.6", 0.0102, 0.0048),
    "Pix_B_128": ("Pix_B", 0.1, 128, "Pixels 128x128", 0.0116, 0.0040),
    "APR_B_E0.8": ("APR_B", 0.8, 256, "APR E = 0.8", 0.0261, 0.0067),
    "Pix_B_64": ("Pix_B", 0.1, 64, "Pixels 64x64", 0.0770, 0.0123),
}
#: Figures 4.3 (A) and 4.4 (B): networks at E = 0.1 on 256x256 images
CURVES = {"A": ("APR_A", "APR_A-same", "APR_A-close", "Pix_A"),
          "B": ("APR_B", "APR_B-same", "APR_B-close", "Pix_B")}
FINITE_SIZES = (20, 100, 500)


def run_name(model: str, rel_error: float = 0.1, size: int = 256) -> str:
    """Run folder name shared by the table and the curves (APR_B at E = 0.1 is one run)."""
    if model.startswith("APR"):
        return f"{model}_E{rel_error:g}"
    return f"{model}_{size}"


def _run(runs: Path, name: str, steps: int, **config) -> None:
    """Train (or resume, or skip when done) the run ``runs/name`` to ``steps`` steps."""
    out = runs / name
    log = out / "log.csv"
    done = _read_log(log)
    if done["steps"] >= steps and done["finished"]:
        return
    cfg = TrainConfig(**{"batch_size": 36, "lr": 5e-4, "seed": 0, "checkpoint_every": 100,
                         "last_window": WINDOW, **config, "steps": steps})
    resume = (out / "checkpoint.pt").is_file()
    print(f"{name}: {'resuming' if resume else 'starting'} ({steps} steps)", flush=True)
    for ev in train(cfg, out, resume=resume):
        if ev.phase == "train" and ev.step % 100 == 0:
            print(f"  {name} step {ev.step}  error(last 100) "
                  f"{np.mean(_read_log(log)['errors'][-WINDOW:]):.4f}  {ev.step_time:.2f} s/step", flush=True)
        elif ev.phase in ("val", "test", "test_modified"):
            print(f"  {name} {ev.phase} step {ev.step} accuracy {ev.accuracy:.4f}", flush=True)
    (out / "finished.json").write_text(json.dumps({"steps": steps}))


def _read_log(path: Path) -> dict:
    errors, times, evals = [], [], {}
    if path.is_file():
        with open(path, newline="") as f:
            prev = 0.0
            for row in csv.DictReader(f):
                if row["phase"] == "train":
                    errors.append(1 - float(row["accuracy"]))
                    t = float(row["elapsed"])
                    times.append(t - prev)
                    prev = t
                elif row["phase"] in ("val", "test", "test_modified"):
                    evals.setdefault(row["phase"], []).append((int(row["step"]), float(row["accuracy"]),
                                                              float(row["loss"])))
                    prev = float(row["elapsed"])
    fin = path.parent / "finished.json"
    finished_steps = json.loads(fin.read_text())["steps"] if fin.is_file() else -1
    return {"errors": errors, "step_times": times, "evals": evals, "steps": len(errors),
            "finished": finished_steps >= len(errors) > 0}


def cmd_table(args) -> None:
    for name, (model, e, size, *_rest) in TABLE.items():
        if args.only and name not in args.only:
            continue
        steps = args.pix256_steps if name == "Pix_B_256" else (args.steps if name == "APR_B_E0.1" else
                                                               args.other_steps)
        _run(args.runs, name, steps, model=model, rel_error=e, size=size, image_size=256)


def cmd_curves(args) -> None:
    for arch, models in CURVES.items():
        for model in models:
            name = run_name(model)
            pixel256 = model.startswith("Pix")
            if name in TABLE or (args.only and name not in args.only):  # table runs are longer
                continue
            _run(args.runs, name, args.pix256_steps if pixel256 else args.steps, model=model, rel_error=0.1,
                 size=256, image_size=256)


def seed_name(seed: int) -> str:
    """Run folder of APR_B at E = 0.1 with another seed (seed 0 is the table's run)."""
    return "APR_B_E0.1" if seed == 0 else f"APR_B_E0.1_seed{seed}"


def cmd_seeds(args) -> None:
    for seed in args.seeds:
        if seed == 0:
            raise SystemExit("seed 0 is the Table 4.2 run (bench_training.py table); give other seeds")
        _run(args.runs, seed_name(seed), args.steps, model="APR_B", rel_error=0.1, size=256, image_size=256,
             seed=seed)


def _seed_lines(runs: Path) -> list[str]:
    """How much the Table 4.2 goal row depends on the seed (the seeds run so far)."""
    suffixes = (p.name.removeprefix("APR_B_E0.1_seed") for p in runs.glob("APR_B_E0.1_seed*"))
    seeds = sorted(int(s) for s in suffixes if s.isdigit())
    logs = {s: _read_log(runs / seed_name(s) / "log.csv") for s in [0, *seeds]}
    logs = {s: log for s, log in logs.items() if log["steps"] >= 1000}
    if len(logs) < 2:
        return []
    lines = ["### APR_B at E = 0.1 with other seeds", "",
             "The same run as the table's first row (the seed sets the initial weights and the stream of images). "
             "Mean training-batch error over the 100 batches before each step:", "",
             "| seed | @500 | @1000 |", "|---:|---:|---:|"]
    at = {n: [float(np.mean(log["errors"][n - WINDOW:n])) for log in logs.values()] for n in (500, 1000)}
    for i, s in enumerate(logs):
        lines.append(f"| {s} | {at[500][i]:.4f} | {at[1000][i]:.4f} |")
    lines += [f"| mean of {len(logs)} | {np.mean(at[500]):.4f} | {np.mean(at[1000]):.4f} |", ""]
    return lines


def finite_name(model: str, n: int, size: int) -> str:
    return f"finite_{model}_{n}_{size}"


def cmd_finite(args) -> None:
    for n in FINITE_SIZES:
        for model in ("APR_B", "Pix_B"):
            if args.only and model not in args.only:
                continue
            _run(args.runs, finite_name(model, n, args.size), args.steps, model=model, size=args.size,
                 image_size=args.size, epochs=100000, n_train=n, n_val=100, n_test=args.n_test,
                 eval_every=args.eval_every)


# ----- report --------------------------------------------------------------------------

def _mean_std(errors: list, upto: int | None = None) -> tuple[float, float] | None:
    e = np.asarray(errors[:upto] if upto else errors, float)
    if upto and len(e) < upto or len(e) < WINDOW:
        return None
    last = e[-WINDOW:]
    return float(last.mean()), float(last.std())


def _fmt(ms) -> str:
    return "-" if ms is None else f"{ms[0]:.4f} +- {ms[1]:.4f}"


def _wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _plot_curves(runs: Path, path: Path, models: tuple, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    k = 25
    for model in models:
        log = _read_log(runs / run_name(model) / "log.csv")
        if log["steps"] < k:
            continue
        acc = 1 - np.convolve(log["errors"], np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(acc)) + k, acc, label=model, lw=1.2)
    ax.set(xlabel="batch (36 images)", ylabel=f"training accuracy (running mean of {k} batches)", title=title,
           ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_finite(rows: list, path: Path, size: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, key, title in zip(axes, ("test", "test_modified"), ("test set", "modified-distribution test set")):
        for model, colour in (("APR_B", "C0"), ("Pix_B", "C1")):
            pts = [(r["n"], r[key]) for r in rows if r["model"] == model and r.get(key)]
            if not pts:
                continue
            ns = [p[0] for p in pts]
            acc = [p[1]["accuracy"] for p in pts]
            lo = [p[1]["ci"][0] for p in pts]
            hi = [p[1]["ci"][1] for p in pts]
            ax.plot(ns, acc, "o-", color=colour, label=model)
            ax.plot(ns, lo, "--", color=colour, lw=0.8)
            ax.plot(ns, hi, "--", color=colour, lw=0.8)
        ax.set(xscale="log", xlabel="training images per class", title=title)
        ax.set_xticks(FINITE_SIZES, [str(n) for n in FINITE_SIZES])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="lower right")
    fig.suptitle(f"Finite datasets ({size}x{size} images), 95 % intervals dashed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cmd_report(args) -> None:
    runs = args.runs
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = (f"{platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}; each run with "
               f"{args.run_threads}")
    lines = ["## Table 4.2: error threshold E vs pixel resolution (streaming shapes)", "",
             f"Machine: {machine}. Commands: see the top of `benchmarks/bench_training.py`.", "",
             "| data | steps run | error, last 100 of 1000 batches | error, last 100 batches | "
             "thesis (3000 batches) | step time (s) |", "|---|---:|---|---|---|---:|"]
    for name, (model, e, size, label, t_mean, t_std) in TABLE.items():
        log = _read_log(runs / name / "log.csv")
        if not log["steps"]:
            lines.append(f"| {label} | not run | | | {t_mean:.4f} +- {t_std:.4f} | |")
            continue
        st = float(np.median(log["step_times"][5:] or log["step_times"]))
        lines.append(f"| {label} | {log['steps']} | {_fmt(_mean_std(log['errors'], 1000))} | "
                     f"{_fmt(_mean_std(log['errors']))} | {t_mean:.4f} +- {t_std:.4f} | {st:.3f} |")
    lines += ["", *_seed_lines(runs), *_held_out_lines()]
    for arch, models in CURVES.items():
        png = f"learning_curves_{arch}.png"
        _plot_curves(runs, RESULTS / png, models, f"Networks {arch} (Figure {'4.3' if arch == 'A' else '4.4'})")
        lines += [f"### Learning curves, networks {arch} (thesis Figure {'4.3' if arch == 'A' else '4.4'})", "",
                  f"![learning curves {arch}]({png})", "",
                  "| network | steps run | error, last 100 batches | first step with running error <= 0.05 |",
                  "|---|---:|---|---:|"]
        for model in models:
            log = _read_log(runs / run_name(model) / "log.csv")
            if not log["steps"]:
                lines.append(f"| {model} | not run | | |")
                continue
            run_mean = np.convolve(log["errors"], np.ones(50) / 50, mode="valid")
            hit = np.flatnonzero(run_mean <= 0.05)
            lines.append(f"| {model} | {log['steps']} | {_fmt(_mean_std(log['errors']))} | "
                         f"{int(hit[0]) + 50 if len(hit) else '-'} |")
        lines.append("")
    rows = []
    for n in FINITE_SIZES:
        for model in ("APR_B", "Pix_B"):
            log = _read_log(runs / finite_name(model, n, args.size) / "log.csv")
            row = {"model": model, "n": n, "steps": log["steps"]}
            for key in ("test", "test_modified"):
                if key in log["evals"]:
                    acc = log["evals"][key][-1][1]
                    ntest = 6 * args.n_test
                    row[key] = {"accuracy": acc, "ci": _wilson(acc, ntest)}
            rows.append(row)
    if any("test" in r for r in rows):
        png = "finite_datasets.png"
        _plot_finite(rows, RESULTS / png, args.size)
        lines += ["## Figure 4.6: finite datasets", "",
                  f"{args.size}x{args.size} images (reduced from 256 to fit this machine), training sets of "
                  f"{', '.join(map(str, FINITE_SIZES))} images per class (nested), validation 100 and test "
                  f"{args.n_test} images per class, up to {args.steps} steps of 36 images; dropout 0.5, spatial "
                  "dropout 0.3, weight decay 1e-4 (thesis 4.1.3.4); the model with the lowest validation loss is "
                  "tested. 95 % Wilson intervals.", "", f"![finite datasets]({png})", "",
                  "| network | images per class | steps | test accuracy (95 % interval) | "
                  "modified test accuracy (95 % interval) |", "|---|---:|---:|---|---|"]
        for r in rows:
            cells = []
            for key in ("test", "test_modified"):
                v = r.get(key)
                cells.append("-" if v is None else f"{v['accuracy']:.3f} ({v['ci'][0]:.3f}-{v['ci'][1]:.3f})")
            lines.append(f"| {r['model']} | {r['n']} | {r['steps']} | {cells[0]} | {cells[1]} |")
        lines.append("")
    lines += _diagnosis_lines()
    out = RESULTS / "training.md"
    head = out.read_text().split(MARKER)[0] if out.is_file() else "# Training results\n\n"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(head + MARKER + "\n\n" + "\n".join(lines) + "\n")
    os.replace(tmp, out)
    print("\n".join(lines))


def _diagnosis_lines() -> list[str]:
    """The table of ``bench_learning_diagnosis.py`` (results/diagnosis.json), if it was run."""
    path = RESULTS / "diagnosis.json"
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    lines = ["## Diagnosis runs (`benchmarks/bench_learning_diagnosis.py`)", "",
             "Training error = mean over the 100 batches before the step. Held-out: 600 images (100 per class) of "
             "the legacy distribution (amplitude 3-12 % of the radius) and of the new one (2-6.4 px), after "
             "BatchNorm re-estimation.", "",
             "| variant | model | error @300 | @600 | @800 | @1000 | @3000 | held-out legacy | held-out new |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in d.items():
        at = r["train_error_at"]
        cells = [f"{at[s]:.3f}" if s in at else "-" for s in ("300", "600", "800", "1000", "3000")]
        lines.append(f"| {name}: {r['description']} | {r['model']} | {' | '.join(cells)} | "
                     f"{r['held_out_legacy']['error']:.3f} | {r['held_out_new']['error']:.3f} |")
    lines += ["", "Held-out error of fuzzy shapes by perturbation amplitude (legacy distribution):", "",
              "| variant | " + " | ".join(f"{lo:g}-{hi:g} px" for lo, hi in
                                         ((0, 1), (1, 1.5), (1.5, 2), (2, 3), (3, 5), (5, 100))) + " |",
              "|---|" + "---:|" * 6]
    for name, r in d.items():
        by = {tuple(b["amplitude_px"]): b for b in r["held_out_legacy"]["by_amplitude"]}
        cells = []
        for key in ((0, 1), (1, 1.5), (1.5, 2), (2, 3), (3, 5), (5, 100)):
            b = by.get(key)
            cells.append("-" if b is None else f"{b['error']:.2f} (n={b['n']})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _held_out_lines() -> list[str]:
    """The analyses of ``bench_learning_diagnosis.py --held-out-of`` (results/held_out.json), if any."""
    path = RESULTS / "held_out.json"
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    symmetries = ("periods divisible by 4", "by 3 (not 4)", "by neither")
    lines = ["### Held-out errors of single checkpoints (`bench_learning_diagnosis.py --held-out-of`)", "",
             "200 images per class of the default distribution, BatchNorm re-estimated; fuzzy shapes by the "
             "symmetry of their ripple; and 720 fresh stream images with BatchNorm in train mode (batch "
             "statistics, as the training-batch error is measured) and in eval mode.", "",
             "| run | held-out error | fuzzy | " + " | ".join(f"fuzzy, {s}" for s in symmetries)
             + " | fresh, train mode | fresh, eval mode |", "|---|" + "---:|" * 7]
    for name, r in d.items():
        by = {b["periods"]: b for b in r["by_symmetry"]}
        cells = [f"{by[s]['error']:.3f} (n={by[s]['n']})" if s in by else "-" for s in symmetries]
        bs = r["batch_statistics"]
        lines.append(f"| {name} | {r['error']:.4f} | {r['error_fuzzy']:.4f} | {' | '.join(cells)} | "
                     f"{bs['train_mode']:.3f} | {bs['eval_mode']:.3f} |")
    return lines + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=Path("out/training"), help="run folders (resumable)")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="Table 4.2")
    t.add_argument("--steps", type=int, default=3000, help="APR_B at E = 0.1")
    t.add_argument("--other-steps", type=int, default=1500, help="the other rows")
    t.add_argument("--pix256-steps", type=int, default=600, help="Pix_B on 256x256 (7x slower per step)")
    c = sub.add_parser("curves", help="Figures 4.3 and 4.4")
    c.add_argument("--steps", type=int, default=1000)
    c.add_argument("--pix256-steps", type=int, default=600)
    for sp in (sub.add_parser("finite", help="Figure 4.6"), sub.add_parser("report", help="write the tables")):
        sp.add_argument("--size", type=int, default=128)
        sp.add_argument("--n-test", type=int, default=200, help="test images per class")
        sp.add_argument("--run-threads", default="torch threads 2 (one run at a time)",
                        help="report: how the runs were scheduled (stated beside the step times)")
        sp.add_argument("--steps", type=int, default=600, help="finite: step cap of each training set")
        if sp.prog.endswith("finite"):
            sp.add_argument("--eval-every", type=int, default=50)
    sd = sub.add_parser("seeds", help="APR_B at E = 0.1 with other seeds (how much the goal row varies)")
    sd.add_argument("--steps", type=int, default=1000)
    sd.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    for sp in (t, c, sub.choices["finite"]):
        sp.add_argument("--only", nargs="*", default=None, help="run names (table, curves) or models (finite)")
    args = p.parse_args(argv)
    {"table": cmd_table, "curves": cmd_curves, "finite": cmd_finite, "seeds": cmd_seeds,
     "report": cmd_report}[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
