"""Memory of the benchmark's own process, from /proc/self/status (Linux), shared by the bench scripts."""
from __future__ import annotations


def status_kib(key: str) -> int:
    """The ``/proc/self/status`` field ``key`` (e.g. ``"VmRSS:"``, ``"VmHWM:"``) in KiB; 0 where absent."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def reset_peak() -> None:
    """Reset the peak-RSS high-water mark (VmHWM) to the current RSS, where the kernel allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
