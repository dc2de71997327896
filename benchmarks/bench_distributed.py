"""Benchmark: training steps per second with 1 and N local processes, and the all-reduce time (not a test).

Run:  .venv/bin/python benchmarks/bench_distributed.py [--steps 12] [--threads 2] [--size 128] [--batch 16]

Trains APR_B (and the other ``--nets``) in streaming mode (fresh shapes
every step: generation, APR conversion, plans, forward, backward, all-reduce,
Adam) with ``napari_aprnet.training.train`` once with one process using
``--threads`` threads, once with ``--nproc`` processes sharing them
(``--threads // nproc`` each) and, to tell the gain of more processes from
that of fewer threads per process, once with one process of
``--threads // nproc`` threads; the same global batch, the settings
alternating ``--repeats`` times so that all see the machine's load alike. Steps per
second come from the medians of the event times after ``--warmup`` steps
of each run; the load average is recorded; the communication time per
step is what rank 0 spent in its two all-reduces (the step's agreement and
the gradients), which includes waiting for the slower process. Writes
benchmarks/results/distributed.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys


def _parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="APR_B", help="comma-separated network names")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads in all (one process: all of them)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each setting, alternating")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--note", default="", help="a sentence about the machine's load, put under the table")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "distributed.md"))
    return ap.parse_args()


ARGS = _parse()

import torch  # noqa: E402

from napari_aprnet import _native  # noqa: E402
from napari_aprnet.training import TrainConfig, train  # noqa: E402


def measure(net: str, nproc: int, per_process: int) -> tuple[list, list]:
    """Seconds per step and rank 0's all-reduce seconds per step of one run, after the warm-up steps."""
    os.environ["OMP_NUM_THREADS"] = str(per_process)  # read by the launched processes
    torch.set_num_threads(per_process)
    _native.set_num_threads(per_process)
    config = TrainConfig(model=net, steps=ARGS.steps, batch_size=ARGS.batch, size=ARGS.size, bn_batches=0, seed=0)
    events = [e for e in train(config, None, nproc=nproc) if e.phase == "train"]
    timed = events[ARGS.warmup:]
    return [b.elapsed - a.elapsed for a, b in zip(timed, timed[1:])], [e.comm_time for e in timed]


def main() -> None:
    nets = ARGS.nets.split(",")
    rows = []
    loads = [os.getloadavg()[0]]
    few = max(1, ARGS.threads // ARGS.nproc)
    settings = [(1, ARGS.threads), (1, few), (ARGS.nproc, few)]
    for net in nets:
        times: dict = {s: ([], []) for s in settings}
        for _ in range(ARGS.repeats):
            for nproc, threads in settings:
                steps, comm = measure(net, nproc, threads)
                times[nproc, threads][0].extend(steps)
                times[nproc, threads][1].extend(comm)
                loads.append(os.getloadavg()[0])
        base = statistics.median(times[settings[0]][0])
        for (nproc, threads), (steps, comm) in times.items():
            r = {"threads": threads, "step": statistics.median(steps), "comm": statistics.median(comm)}
            rows.append((net, nproc, r, base / r["step"]))
            print(f"{net} nproc={nproc} threads={threads}: {1 / r['step']:.2f} steps/s, all-reduce {1e3 * r['comm']:.1f} ms/step",
                  flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.processor() or platform.system()}"
    lines = ["# Data-parallel training: 1 vs several local processes", "",
             f"Machine: {machine}; torch {torch.__version__}; gloo on loopback. {ARGS.threads} threads in all: "
             f"one process uses all of them, {ARGS.nproc} processes {few} each; the middle row (one process of "
             f"{few} thread(s)) separates the effect of fewer threads per process from that of more processes. "
             f"Streaming shapes, global batch {ARGS.batch} of {ARGS.size}x{ARGS.size}, median of "
             f"{ARGS.repeats} x {ARGS.steps - ARGS.warmup - 1} step times (after {ARGS.warmup} warm-up steps per "
             f"run, the settings alternating); 1-minute load average during the runs "
             f"{min(loads):.1f}-{max(loads):.1f}. Command: "
             f"`.venv/bin/python benchmarks/bench_distributed.py --nets {ARGS.nets} --nproc {ARGS.nproc} "
             f"--threads {ARGS.threads} --steps {ARGS.steps} --repeats {ARGS.repeats} --size {ARGS.size} "
             f"--batch {ARGS.batch}`.", "",
             "| network | processes | threads / process | steps / s | s / step | speed-up | all-reduce ms / step "
             "(rank 0, incl. waiting) | share of the step |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for net, nproc, r, speedup in rows:
        lines.append(f"| {net} | {nproc} | {r['threads']} | {1 / r['step']:.2f} | {r['step']:.2f} | {speedup:.2f}x | "
                     f"{1e3 * r['comm']:.1f} | {100 * r['comm'] / r['step']:.1f} % |")
    if ARGS.note:
        lines += ["", ARGS.note]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(ARGS.out), exist_ok=True)
    tmp = ARGS.out + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, ARGS.out)
    print(text)
    print(f"wrote {ARGS.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
