"""How many CPU threads torch uses: chosen from the cores this process may use and how busy they are.

torch defaults to one intra-op thread per core. On a CPU that other processes keep busy this is the
worst choice for small models: OpenMP threads wait on each other at every operator, and a training
step of the demo models measured 8 times slower with two threads than with one on a loaded 2-core
machine. So, unless told otherwise, ``choose_threads`` takes the cores not already busy (at least one).

The choice, in order of precedence: an explicit ``--threads N``; the usual environment variables
(``OMP_NUM_THREADS``, then ``MKL_NUM_THREADS``); the automatic choice, which `LoadWatch` revisits
while training runs (other work may start or stop). This module imports torch only inside
`apply_threads`, so that a script can decide before its heavy imports.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: Environment variables that set the thread count, in order of precedence.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: The OMP_NUM_THREADS value `apply_threads` set for an automatic choice: a later choice in this process
#: (the demo's next stage) is automatic again rather than "from OMP_NUM_THREADS".
_automatic_env: str | None = None
#: How long the CPU is watched to see how busy it is now (``/proc/stat``), in seconds.
LOAD_SAMPLE_S = 0.3


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and the reason for it, as reported at start-up."""

    threads: int  # intra-op threads for torch
    reason: str  # where the number came from
    automatic: bool = False  # chosen from the load (not given by --threads or the environment)

    def describe(self) -> str:
        return f"CPU threads: {self.threads} ({self.reason}; set with --threads N or OMP_NUM_THREADS)"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), else ``os.cpu_count()``."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies summed over all CPUs from /proc/stat; None where it does not exist."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def load_average() -> float:
    """The 1-minute load average (0 where the system does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def busy_cores(sample_s: float = LOAD_SAMPLE_S) -> float:
    """How many cores other work keeps busy: the larger of the 1-minute load average and the busy share
    of all CPUs over the next ``sample_s`` seconds (which sees load that started only seconds ago)."""
    load = load_average()
    before = _cpu_times()
    if before is None or sample_s <= 0:
        return load
    time.sleep(sample_s)
    after = _cpu_times()
    busy, total = after[0] - before[0], after[1] - before[1]
    now = (os.cpu_count() or 1) * busy / total if total > 0 else 0.0
    return max(load, now)


def free_cores(busy: float, cores: int, processes: int = 1) -> int:
    """Threads for each of ``processes`` processes when other work keeps ``busy`` of ``cores`` cores busy."""
    free = max(1, min(cores, math.floor(cores - busy + 0.5)))
    return max(1, free // max(processes, 1))


class LoadWatch:
    """How many cores other processes kept busy since the last call: the CPU time of all cores
    (``/proc/stat``) minus this process's own (``os.times``), over the wall time between calls."""

    def __init__(self) -> None:
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        times = _cpu_times()
        if times is None:
            return None
        own = os.times()
        return time.monotonic(), times[0] / os.sysconf("SC_CLK_TCK"), own.user + own.system

    def others_busy(self) -> float | None:
        """Cores busy with other work since the previous call (None where /proc/stat does not exist)."""
        now = self._sample()
        last, self._last = self._last, now
        if now is None or last is None or now[0] <= last[0]:
            return None
        return max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0])


def parse_threads(value: str | int | None, source: str) -> int | None:
    """A positive thread count from a flag or variable (None or "" or "auto" or 0: choose automatically)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "auto", "0"):
        return None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 1:
        raise ValueError(f"{source} must be a positive number of threads (or 0/auto for the automatic "
                         f"choice); got {value!r}")
    return n


def choose_threads(requested: str | int | None = None, processes: int = 1,
                   sample_s: float = LOAD_SAMPLE_S) -> ThreadChoice:
    """The thread count for one of ``processes`` training or sampling processes on this machine."""
    n = parse_threads(requested, "--threads")
    if n is not None:
        return ThreadChoice(n, "from --threads")
    for var in THREAD_ENV_VARS:
        if var == "OMP_NUM_THREADS" and _automatic_env is not None and os.environ.get(var) == _automatic_env:
            continue
        n = parse_threads(os.environ.get(var), var)
        if n is not None:
            return ThreadChoice(n, f"from {var}")
    cores = available_cores()
    if free_cores(load_average(), cores, processes) == 1:  # watching the CPU could only confirm one thread
        sample_s = 0.0
    busy = busy_cores(sample_s)
    per_process = free_cores(busy, cores, processes)
    share = f", shared by {processes} processes" if processes > 1 else ""
    return ThreadChoice(per_process, f"{cores} cores, {busy:.1f} busy with other work{share}", automatic=True)


def apply_threads(choice: ThreadChoice) -> ThreadChoice:
    """Set torch's intra-op thread count and ``OMP_NUM_THREADS`` (inherited by the processes Lightning
    starts for DDP, which would otherwise divide all cores among themselves)."""
    import torch

    global _automatic_env
    os.environ["OMP_NUM_THREADS"] = str(choice.threads)
    _automatic_env = str(choice.threads) if choice.automatic else None
    torch.set_num_threads(choice.threads)
    return choice
