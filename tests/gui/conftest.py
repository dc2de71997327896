"""GUI tests (napari widgets under Xvfb with pytest-qt): shared set-up of the folder.

Every test here is marked ``gui``. Without napari the folder is not
collected; without a display (pytest-xvfb sets ``DISPLAY`` when Xvfb is
installed) its tests are skipped with the reason.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

collect_ignore_glob = [] if importlib.util.find_spec("napari") else ["test_*.py"]


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    # read now, not at import: pytest-xvfb sets DISPLAY when it starts Xvfb (pytest_configure)
    no_display = sys.platform.startswith("linux") and not os.environ.get("DISPLAY")
    skip = pytest.mark.skip(reason="napari widgets need a display: install Xvfb (apt-get install xvfb) "
                                   "for pytest-xvfb")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.gui)
            if no_display:
                item.add_marker(skip)
