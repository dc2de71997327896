"""time_training_steps: seconds per step measured by running a few steps in memory."""
from __future__ import annotations

import threading

import pytest

from napari_aprnet.training import TrainConfig
from napari_aprnet.training.timing import time_training_steps


def _config(steps: int = 50) -> TrainConfig:
    return TrainConfig(model="APR_A", data="shapes", steps=steps, size=32, batch_size=4).validate()


def test_times_steps_in_memory_and_stops(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seconds = time_training_steps(_config(), steps=2)
    assert seconds is not None and 0 < seconds < 60
    assert list(tmp_path.iterdir()) == []  # nothing written
    stop = threading.Event()
    stop.set()
    assert time_training_steps(_config(), steps=2, stop=stop) is None  # stopped after its first step
    assert time_training_steps(_config(steps=1), steps=3) > 0  # a run shorter than the timing: its steps
    with pytest.raises(ValueError, match="steps must be"):
        time_training_steps(_config(), steps=0)
