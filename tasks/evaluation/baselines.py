"""What a multiple-choice score is read against: the constant answer and uniform guessing.

A suite's accuracy means little alone: on BoolQ, where 62 % of the answers are "yes", a
model that always says "yes" scores 0.62, and a model at 0.55 is worse than no model at
all. So every multiple-choice suite is scored with two references taken from its own
labels, and one more score of the model:

    <suite>_majority       always giving the suite's most common answer (the constant
                           predictor: the same label index for every item)
    <suite>_chance         guessing uniformly (the mean of 1 / choices)
    <suite>_balanced_acc   the model's mean recall over the gold labels that occur: 1 / K
                           for any constant answer, whatever the label shares

Each prediction record also gets `majority_correct`, the constant predictor's score on that
item, so the constant predictor is paired with a model item by item like any other model
(`constant_item_scores`): the summary's "arm - majority" intervals and the gate's
`registry.must_beat_majority` come from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from multilora_pipeline.data_specs import metrics as names
from multilora_pipeline.tasks.evaluation.confidence import ItemScores

MAJORITY_COLUMN = "majority_correct"
"""The prediction-table column holding the constant predictor's per-item score."""


def majority_label(labels: Sequence[int]) -> int:
    """The label a constant predictor gives every item: the suite's most common one (the
    lowest index on a tie, so the choice is deterministic)."""
    return int(np.argmax(np.bincount(np.asarray(labels, dtype=np.int64))))


def suite_baselines(suite: str, rows: list[dict], records: list[dict]) -> dict[str, float]:
    """`<suite>_majority`, `<suite>_chance` and the model's `<suite>_balanced_acc`; each of
    `records` (the model's predictions, in `rows`' order) gains its gold `label` index and
    `majority_correct`."""
    labels = np.array([int(r["label"]) for r in rows])
    constant = majority_label(labels)
    for record, label in zip(records, labels, strict=True):
        record["label"] = int(label)
        record[MAJORITY_COLUMN] = bool(label == constant)
    correct = np.array([r["correct"] for r in records], dtype=float)
    recalls = [correct[labels == c].mean() for c in np.unique(labels)]
    return {
        names.suite_metric(suite, names.BALANCED_ACC): float(np.mean(recalls)),
        names.suite_metric(suite, names.MAJORITY): float(np.mean(labels == constant)),
        names.suite_metric(suite, names.CHANCE): float(
            np.mean([1 / len(r["choices"]) for r in rows])
        ),
    }


def constant_item_scores(predictions: pd.DataFrame) -> ItemScores:
    """The constant predictor's per-item scores (acc and acc_norm alike: it gives one answer)
    on every multiple-choice suite of a prediction table."""
    out: ItemScores = {}
    if predictions.empty or MAJORITY_COLUMN not in predictions:
        return out
    for suite, rows in predictions.groupby("suite", sort=False):
        scores = rows[MAJORITY_COLUMN]
        if scores.isna().any():  # a generation suite: no constant answer to compare with
            continue
        for kind in names.MULTIPLE_CHOICE:
            out[(str(suite), kind)] = scores.astype(float).to_numpy()
    return out


def baseline_rows(
    metrics: dict[str, float],
    predictions: pd.DataFrame,
    primary: tuple[str, Sequence[tuple[str, str]]] | None = None,
) -> dict[str, dict]:
    """The summary's two reference rows, per multiple-choice suite: "chance" (acc, acc_norm
    and balanced accuracy all the chance rate) and "majority" (acc and acc_norm the majority
    rate, balanced accuracy 1 / the number of gold labels that occur). `primary` is the
    primary metric and the (suite, kind) parts it is the mean of: the rows get it too when
    every part is a multiple-choice suite."""
    rows: dict[str, dict[str, float]] = {"chance": {}, "majority": {}}
    if predictions.empty or MAJORITY_COLUMN not in predictions:
        return rows
    for suite, items in predictions.groupby("suite", sort=False):
        majority = metrics.get(names.suite_metric(str(suite), names.MAJORITY))
        chance = metrics.get(names.suite_metric(str(suite), names.CHANCE))
        if majority is None or chance is None:
            continue
        for kind in names.MULTIPLE_CHOICE:
            rows["chance"][names.suite_metric(str(suite), kind)] = chance
            rows["majority"][names.suite_metric(str(suite), kind)] = majority
        balanced = names.suite_metric(str(suite), names.BALANCED_ACC)
        rows["chance"][balanced] = chance
        rows["majority"][balanced] = 1 / max(1, items["label"].nunique())
    if primary is not None:
        metric, parts = primary
        for row in rows.values():
            found = [row.get(names.suite_metric(suite, kind)) for suite, kind in parts]
            if found and None not in found:
                row[metric] = float(np.mean(found))
    return rows
