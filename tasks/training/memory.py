"""Peak memory of one arm's training, measured for that arm alone.

On a GPU it is torch's peak allocation since the arm started (the counter is reset at the
start). On a CPU the process's lifetime peak (`ru_maxrss`) would report the first arm's peak
for every later arm, so a thread samples the resident set every `interval_s` while the arm
trains and keeps the largest.
"""

from __future__ import annotations

import threading

import psutil
import torch


class PeakMemory:
    """`with PeakMemory(device) as peak: ...`, then `peak.mb` (MiB); `peak.mb` is also the
    peak so far while the block runs (the progress lines log it)."""

    def __init__(self, device: str, interval_s: float = 0.05):
        self.device, self.interval_s = device, interval_s
        self._process = psutil.Process()
        self._peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            self._sample()
            self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()

    @property
    def mb(self) -> float:
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        self._sample()
        return self._peak_bytes / 2**20

    def _sample(self) -> None:
        self._peak_bytes = max(self._peak_bytes, self._process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()
