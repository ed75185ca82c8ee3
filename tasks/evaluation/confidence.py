"""How sure a comparison is: per-item scores, their mean over seeds, and paired bootstrap
intervals for any metric evaluation logs.

Every headline metric is a mean of per-item scores (data_specs/metrics.py): a suite's
acc is the mean of its items' 0/1 correctness, a category's score the mean of its
suites' headline scores, `eval_macro_acc` the mean over every suite. So one bootstrap
serves them all: resample each suite's items (with replacement, the same indices for
both models: paired), recompute the metric from the resampled suite means, and take
the percentiles. Suites are resampled independently (stratified), as their sizes are
fixed by the spec. An arm with several seeds contributes the per-item mean over its
seeds, so the interval is over items for the arm as trained, not for one lucky seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from multilora_pipeline.data_specs import metrics as names

ItemScores = dict[tuple[str, str], np.ndarray]
"""(suite, metric kind) -> one score per item, in the suite's order."""

# Which prediction column holds an item's score for each metric kind (tasks/evaluation/evaluate.py).
_COLUMN = {
    "acc": "correct",
    "acc_norm": "correct_norm",
    "exact_match": "correct",
    "strict_match": "correct",
    "flexible_extract": "correct_flexible",
}
LEVEL = 0.95
_CHUNK = 250  # resamples drawn at once: bounds memory at 250 x items indices


@dataclass(frozen=True)
class Interval:
    """A difference (or a score) and its bootstrap interval."""

    estimate: float
    low: float
    high: float
    items: int
    resamples: int
    level: float = LEVEL

    def describe(self) -> str:
        pct = round(self.level * 100)
        return f"{self.estimate:+.4f}, {pct}% CI [{self.low:+.4f}, {self.high:+.4f}]"

    def as_dict(self) -> dict:
        return asdict(self)


def item_scores(predictions: pd.DataFrame) -> ItemScores:
    """Per-item scores of every metric kind present, from an evaluation's prediction table."""
    out: ItemScores = {}
    if predictions.empty:
        return out
    for suite, rows in predictions.groupby("suite", sort=False):
        for kind, column in _COLUMN.items():
            if column in rows:
                out[(str(suite), kind)] = rows[column].astype(float).to_numpy()
    return out


def mean_over_seeds(per_seed: Sequence[ItemScores]) -> ItemScores:
    """The per-item mean across an arm's seeds (every seed scored the same items)."""
    first = per_seed[0]
    for other in per_seed[1:]:
        for key, scores in first.items():
            if key not in other or len(other[key]) != len(scores):
                raise ValueError(f"seeds were scored on different items of {key[0]!r}")
    return {key: np.mean([s[key] for s in per_seed], axis=0) for key in first}


def metric_parts(metric: str, suites: Iterable) -> tuple[tuple[str, str], ...]:
    """The (suite, kind) scores `metric` is the mean of; `suites` are the spec's eval suites.

    eval_macro_acc: every suite's headline; category_<c>_score: the headline of the
    category's suites; <suite>_<kind>: that suite's kind alone.
    """
    suites = list(suites)
    headline = [(s.name, names.headline_kind(s.kind)) for s in suites]
    if metric == names.MACRO:
        return tuple(headline)
    in_category = tuple(
        part
        for part, s in zip(headline, suites, strict=True)
        if names.category_metric(s.category) == metric
    )
    if in_category:
        return in_category
    for s in suites:
        for kind in names.suite_kinds(s.kind, s.template):
            if names.suite_metric(s.name, kind) == metric:
                return ((s.name, kind),)
    raise KeyError(f"{metric!r} is not a per-item metric of these suites")


def paired_bootstrap(
    a: ItemScores,
    b: ItemScores | None,
    parts: Sequence[tuple[str, str]],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """The metric made of `parts` for `a` minus the same for `b` (or `a` alone when `b` is
    None), with a percentile interval from `resamples` paired, suite-stratified resamples.

    Deterministic for a given seed. A constant per-item difference gives an interval of
    exactly that constant.
    """
    rng = np.random.default_rng(seed)
    suites = list(dict.fromkeys(suite for suite, _ in parts))
    sums = np.zeros(resamples)
    estimate = 0.0
    items = 0
    for suite in suites:
        kinds = [kind for s, kind in parts if s == suite]
        diffs = []
        for kind in kinds:
            key = (suite, kind)
            if key not in a or (b is not None and key not in b):
                raise KeyError(f"no per-item {kind} scores for suite {suite!r}")
            if b is not None and len(a[key]) != len(b[key]):
                raise ValueError(f"suite {suite!r}: the two models were scored on other items")
            diffs.append(a[key] - (b[key] if b is not None else 0.0))
        n = len(diffs[0])
        items += n
        # The same indices for every kind of a suite: they are the same items.
        for start in range(0, resamples, _CHUNK):
            count = min(_CHUNK, resamples - start)
            idx = rng.integers(0, n, size=(count, n))
            for diff in diffs:
                sums[start : start + count] += diff[idx].mean(axis=1)
        estimate += sum(float(d.mean()) for d in diffs)
    means = sums / len(parts)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(
        estimate=estimate / len(parts),
        low=float(low),
        high=float(high),
        items=items,
        resamples=resamples,
        level=level,
    )


def mean_and_spread(per_seed: Sequence[Mapping[str, float]]) -> tuple[dict, dict]:
    """Mean and sample standard deviation (0 for one seed) of every metric over seeds."""
    keys = sorted(set().union(*per_seed))
    mean, sd = {}, {}
    for key in keys:
        values = np.array([m[key] for m in per_seed if key in m], dtype=float)
        mean[key] = float(values.mean())
        sd[key] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return mean, sd
