"""The paired bootstrap of tasks/evaluation/confidence.py against scipy.stats.bootstrap.

scipy's `bootstrap(paired=True, method="percentile")` is the reference for one suite; it
has no stratified resampling, so the macro mean over several suites (each resampled on its
own, as the pipeline needs) is ours alone. Prints JSON: both intervals on the same data,
their difference (Monte-Carlo noise of two different resample streams), and the time.

    .venv/bin/python benchmarks/bootstrap.py
"""

from __future__ import annotations

import json
import time

import numpy as np
from scipy import stats

from multilora_pipeline.tasks.evaluation.confidence import paired_bootstrap


def _timed(fn, repeat: int = 5):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main() -> None:
    rng = np.random.default_rng(0)
    items = 80
    base = rng.integers(0, 2, items).astype(float)
    arm = np.where(rng.random(items) < 0.15, 1.0, base)  # ~15% of items flip to right
    ours, ours_s = _timed(
        lambda: paired_bootstrap(
            {("s", "acc"): arm}, {("s", "acc"): base}, [("s", "acc")], resamples=10_000
        )
    )
    scipy_ci, scipy_s = _timed(
        lambda: (
            stats.bootstrap(
                (arm, base),
                lambda a, b, axis: (a - b).mean(axis=axis),
                paired=True,
                n_resamples=10_000,
                method="percentile",
                random_state=1,
                vectorized=True,
            ).confidence_interval
        )
    )
    suites = {
        (f"s{i}", "acc"): rng.integers(0, 2, n).astype(float) for i, n in enumerate((80, 40, 200))
    }
    other = {k: np.clip(v + (rng.random(len(v)) < 0.1), 0, 1) for k, v in suites.items()}
    macro, macro_s = _timed(lambda: paired_bootstrap(other, suites, list(suites), resamples=1000))
    print(
        json.dumps(
            {
                "one_suite_80_items_10k_resamples": {
                    "ours": [round(ours.low, 4), round(ours.high, 4)],
                    "scipy": [round(float(scipy_ci.low), 4), round(float(scipy_ci.high), 4)],
                    "max_endpoint_difference": round(
                        max(abs(ours.low - scipy_ci.low), abs(ours.high - scipy_ci.high)), 4
                    ),
                    "ours_seconds": round(ours_s, 4),
                    "scipy_seconds": round(scipy_s, 4),
                },
                "macro_3_suites_320_items_1k_resamples": {
                    "interval": [round(macro.low, 4), round(macro.high, 4)],
                    "seconds": round(macro_s, 4),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
