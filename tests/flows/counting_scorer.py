"""Counting the real scorer's calls per pipeline run, for the tests that check what a rerun
scores again."""

from __future__ import annotations


class CountingScorer:
    """The real `evaluate_model`, wrapped to count its calls per pipeline run (nothing mocked)."""

    def __init__(self, real):
        self.real = real
        self.calls: list[int] = []

    def __call__(self, *args, **kwargs):
        self.calls[-1] += 1
        return self.real(*args, **kwargs)
