"""How much CPU other processes take while a timing runs, and waiting for a quiet moment (the bench
machine may be shared). Standard library only: bench/llama_cpp_runner.py runs under an interpreter
without torch; bench/rooflines.py re-exports these for the torch benchmarks."""

from __future__ import annotations

import os
import time
from pathlib import Path

QUIET = 0.2  # cores of other load above which a timing counts as disturbed


class OtherLoad:
    """CPU time other processes (and the hypervisor: steal) used while a block ran, in cores.

    The bench machine is shared; a timing taken while something else ran is flagged and, where a quiet
    repeat exists, left out of the median.
    """

    def __enter__(self):
        self.b0, self.o0, self.t0 = self._busy(), self._own(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        self.cores = max(0.0, (self._busy() - self.b0) - (self._own() - self.o0)) / dt

    @staticmethod
    def _busy() -> float:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system


class QuietWaiter:
    """Before a timing, wait (up to per_call s, and `budget` s over the whole run) for a 1 s window in
    which other processes used <= QUIET cores: on a shared machine this raises the share of clean timings."""

    def __init__(self, budget: float, per_call: float = 60.0) -> None:
        self.left, self.per_call, self.waited = budget, per_call, 0.0

    def __call__(self) -> bool:
        t_end = time.perf_counter() + min(self.per_call, self.left)
        t0 = time.perf_counter()
        ok = False
        while time.perf_counter() < t_end:
            with OtherLoad() as ol:
                time.sleep(1.0)
            if ol.cores <= QUIET:
                ok = True
                break
        spent = time.perf_counter() - t0
        self.left -= spent
        self.waited += spent
        return ok
