"""How long a training step of a run takes on this machine, measured by running a few steps."""
from __future__ import annotations

import statistics
import threading
from collections.abc import Callable

from napari_aprnet.training.config import TrainConfig
from napari_aprnet.training.loop import train

__all__ = ["time_training_steps"]


def time_training_steps(config: TrainConfig, steps: int = 3,
                        stop: Callable[[], bool] | threading.Event | None = None) -> float | None:
    """Seconds per training step of ``config`` here: the median of ``steps`` steps after a warm-up step.

    The steps run in memory (nothing is written) with one process, exactly as
    the run would do them (data, conversion, forward, backward, optimizer);
    the warm-up step (first allocations, caches) is left out. Returns None
    when ``stop`` ended the timing early.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    times = []
    events = train(config, None, stop=stop)
    try:
        for event in events:
            if event.phase == "stopped":
                return None
            if event.phase == "train":
                times.append(event.step_time)
                if len(times) > steps:
                    break
    finally:
        events.close()
    if len(times) <= steps:  # the run is shorter than the timing: all its steps count
        return statistics.median(times) if times else None
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    """``python -m napari_aprnet.training.timing CONFIG_JSON [STEPS]``: print the seconds per step (or "none")."""
    import json
    import sys

    from napari_aprnet.training.config import TrainConfig

    args = sys.argv[1:] if argv is None else argv
    config = TrainConfig.from_dict(json.loads(args[0])).validate()
    seconds = time_training_steps(config, int(args[1]) if len(args) > 1 else 2)
    print("none" if seconds is None else repr(seconds), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
