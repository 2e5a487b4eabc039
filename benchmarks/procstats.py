"""What a process tree costs: CPU seconds and memory read from /proc (Linux only)."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (the forked worker processes)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree.extend(frontier)
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), 0 if it is gone."""
    try:
        # Fields after the command name: state is 3rd, utime the 14th and stime the 15th.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(roots: list[int]) -> dict[int, float]:
    """CPU seconds so far of every process under ``roots``, by pid."""
    return {pid: cpu_seconds(pid) for root in roots for pid in process_tree(root)}


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two readings; a process started in between counts from zero."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages count once across the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class MemorySampler(threading.Thread):
    """Samples the workers' memory while the batch runs; keeps the peaks."""

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.peak_pss = 0.0
        self.peak_rss: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            pids = [pid for root in self.roots for pid in process_tree(root)]
            self.peak_pss = max(self.peak_pss, sum(pss_mb(pid) for pid in pids))
            for pid in pids:
                with contextlib.suppress(OSError, ValueError):
                    self.peak_rss[pid] = peak_rss_mb(pid)
