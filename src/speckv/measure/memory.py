"""Peak resident memory of this process (Linux /proc), for long-input benchmarks.

The kernel keeps a high-water mark (VmHWM) that can be reset (clear_refs 5), so the peak of one
piece of work (a prefill, one document) can be read apart from loading's. Elsewhere the peak is
the process's maximum so far (getrusage), which is what these return when /proc is missing."""

from __future__ import annotations

import resource
from pathlib import Path


def status_gib(key: str) -> float | None:
    """A /proc/self/status memory line (VmRSS, VmHWM...) in GiB; None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    line = next((x for x in text.splitlines() if x.startswith(key + ":")), None)
    return int(line.split()[1]) / 2**20 if line else None


def reset_peak() -> None:
    """Start a new high-water mark at the current resident size (no-op where unsupported)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_gib() -> float:
    """The high-water mark since the last reset_peak (or since the process started)."""
    peak = status_gib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
