"""The promote stage: a champion/challenger gate over registered versions.

The challenger replaces the champion only if it beats it on the primary
metric and no category score (`category_*` metrics) drops by more than
`regression_tolerance`. "Beats" is decided on intervals when the caller gives
them (the pipeline always does: a paired bootstrap over the evaluation items,
tasks/evaluation/confidence.py): the lower end of the 95% interval of the gain
must exceed `min_improvement`, so a one-item win on a small suite is not a win.
Without an interval (a champion scored on other items) the point gain must reach
`min_improvement` (strictly, when that is 0), and the reasons say so. With no
champion yet, the first eligible challenger (one that has a finite primary
metric) is promoted. Given the base model's metrics, the reasons state the
challenger's primary metric against the base's, and with `must_beat_base` (the
spec's `registry.must_beat_base`, default true) a challenger that does not beat
the base in the same way is never promoted, champion or not: an adapter worse
than no adapter is no win. With `must_beat_majority` (the spec's
`registry.must_beat_majority`, on by default for a pretrained base model) it must also
beat always giving the majority answer, on each multiple-choice suite its primary metric
is made of, by an interval whose lower end clears 0 (the constant predictor is paired
with it item by item, tasks/evaluation/baselines.py): an adapter worse than a constant
answer is never crowned, and the reasons name the suite that failed.

The decision and its reasons become tags on the version (`run_gate`) and on
the pipeline's parent run (`record_decision`), and the pipeline publishes
`GateDecision.markdown()` as a Prefect artifact. Manual promotion and
rollback go through the same alias bookkeeping: the previous holder of
`champion` is remembered in a registered-model tag, so rollback is one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from multilora_pipeline.data_specs.errors import RegistryError
from multilora_pipeline.data_specs.metrics import CATEGORY_PREFIX
from multilora_pipeline.tasks.evaluation.confidence import Interval
from multilora_pipeline.tasks.registry.tracking import Tracker
from multilora_pipeline.tasks.registry.versions import (
    CHAMPION,
    get_version,
    set_alias,
    version_by_alias,
    version_metrics,
)

PREVIOUS_TAG = "mlora.previous_champion"
# The gate's verdicts; "not_promoted" when there was no champion to keep.
PROMOTED, KEPT, NOT_PROMOTED = "promoted", "kept_champion", "not_promoted"


@dataclass
class GateDecision:
    """What the gate decided about one challenger, and why."""

    promote: bool
    challenger: str
    champion: str | None
    primary_metric: str
    challenger_score: float | None
    champion_score: float | None
    reasons: list[str] = field(default_factory=list)
    base_score: float | None = None
    """The base model's primary metric, when the gate was given the base's metrics."""

    @property
    def verdict(self) -> str:
        if self.promote:
            return PROMOTED
        return KEPT if self.champion is not None else NOT_PROMOTED

    def as_tags(self) -> dict[str, str]:
        """The decision as MLflow tags (the same on the version and on the parent run)."""
        return {
            "promotion.decision": self.verdict,
            "promotion.reasons": "; ".join(self.reasons),
            "promotion.challenger": self.challenger,
            "promotion.compared_with": self.champion or "none",
            "promotion.base_score": _fmt(self.base_score),
        }

    def markdown(self) -> str:
        """A short report for the Prefect UI (a markdown artifact)."""
        verdict = "**promoted** to champion" if self.promote else "**not promoted**"
        lines = [
            f"### Promotion gate: version {self.challenger} {verdict}",
            "",
            f"- primary metric `{self.primary_metric}`: challenger "
            f"{_fmt(self.challenger_score)}, champion "
            f"{'none' if self.champion is None else 'v' + self.champion} "
            f"{_fmt(self.champion_score)}, base model {_fmt(self.base_score)}",
        ]
        lines += [f"- {reason}" for reason in self.reasons]
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _gains(gain: float, interval: Interval | None, min_improvement: float) -> bool:
    if interval is not None:  # the whole interval must clear the margin, not the point
        return interval.low > min_improvement
    # min_improvement 0 still asks for a strict gain: a tie keeps the champion (no churn).
    return gain > 0 if min_improvement == 0 else gain >= min_improvement


def _needed(interval: Interval | None, min_improvement: float) -> str:
    if interval is not None:
        return f"the interval's lower end above {min_improvement:+.4f}"
    return "a gain > 0" if min_improvement == 0 else f"a gain >= {min_improvement:.4f}"


def _gain_text(gain: float, interval: Interval | None) -> str:
    if interval is None:
        return f"gain {gain:+.4f}"
    return f"gain {interval.describe()} over {interval.items} items"


def _versus_base(
    decision: GateDecision,
    base_metrics: dict[str, float] | None,
    min_improvement: float,
    must_beat_base: bool,
    interval: Interval | None = None,
) -> tuple[str | None, bool]:
    """The reason line comparing the challenger with the base model, and whether it blocks.

    With `must_beat_base`, a base score that is missing blocks too: the check was asked
    for and cannot be made, so the gate fails closed rather than crowning blindly.
    """
    metric, score = decision.primary_metric, decision.challenger_score
    base = (base_metrics or {}).get(metric)
    if not _finite(base):
        if must_beat_base:
            return (
                f"base model has no finite {metric!r} (got {base!r}), so "
                "registry.must_beat_base cannot be checked; score the base model on the same "
                "suites, or set registry.must_beat_base: false",
                True,
            )
        if base_metrics is None:  # the caller gave no base model: nothing to compare
            return None, False
        return f"base model has no finite {metric!r} (got {base!r}): not compared", False
    decision.base_score = base
    gain = score - base
    line = f"{metric} {score:.4f} vs base model {base:.4f}: {_gain_text(gain, interval)}"
    if _gains(gain, interval, min_improvement):
        return line, False
    if must_beat_base:
        needed = _needed(interval, min_improvement)
        return f"{line}, needs {needed} (registry.must_beat_base)", True
    return f"{line}: no better than the base model (registry.must_beat_base is off)", False


def _versus_majority(
    challenger_metrics: dict[str, float], versus: dict[str, Interval], must_beat: bool
) -> tuple[list[str], list[str]]:
    """(reason lines, blocking lines) comparing the challenger with the constant predictor on
    each multiple-choice suite (`versus`: suite metric -> interval of challenger - constant)."""
    lines, blocking = [], []
    for metric, found in versus.items():
        score = challenger_metrics.get(metric)
        if not _finite(score):
            continue
        majority = score - found.estimate  # the seed mean minus the gain over the constant
        line = (
            f"{metric} {score:.4f} vs always the majority answer {majority:.4f}: "
            f"{_gain_text(found.estimate, found)}"
        )
        if found.low > 0:
            lines.append(line)
        elif must_beat:
            blocking.append(
                f"{line}, needs the interval's lower end above +0.0000 "
                "(registry.must_beat_majority)"
            )
        else:
            lines.append(
                f"{line}: no better than a constant answer (registry.must_beat_majority is off)"
            )
    return lines, blocking


def decide(
    challenger: str,
    challenger_metrics: dict[str, float],
    champion: str | None,
    champion_metrics: dict[str, float] | None,
    *,
    primary_metric: str,
    min_improvement: float,
    regression_tolerance: float,
    base_metrics: dict[str, float] | None = None,
    must_beat_base: bool = False,
    versus_base: Interval | None = None,
    versus_champion: Interval | None = None,
    versus_majority: dict[str, Interval] | None = None,
    must_beat_majority: bool = False,
) -> GateDecision:
    """Pure gate logic: metrics in, decision and reasons out (higher is better everywhere).

    `base_metrics` are the base model's metrics from the same evaluation; with them the
    reasons always state the challenger's primary metric against the base's, and
    `must_beat_base` refuses a challenger that does not beat the base by `min_improvement`.
    `versus_base` / `versus_champion` are the intervals of the challenger's gain on the
    primary metric; given, the gate decides on their lower ends. `versus_majority` holds,
    per multiple-choice suite metric of the primary one, the interval of the challenger
    minus always answering the majority; `must_beat_majority` refuses a challenger whose
    lower end is not above 0 on any of them.
    """
    score = challenger_metrics.get(primary_metric)
    decision = GateDecision(False, challenger, champion, primary_metric, score, None)
    if not _finite(score):
        decision.reasons.append(
            f"not eligible: challenger has no finite {primary_metric!r} (got {score!r})"
        )
        return decision
    base_line, base_blocks = _versus_base(
        decision, base_metrics, min_improvement, must_beat_base, versus_base
    )
    majority_lines, majority_blocks = _versus_majority(
        challenger_metrics, versus_majority or {}, must_beat_majority
    )
    base_reasons = ([base_line] if base_line else []) + majority_lines
    if champion is not None and champion_metrics is not None and challenger == champion:
        decision.champion_score = champion_metrics.get(primary_metric)
        decision.reasons = ["challenger is already the champion", *base_reasons]
        return decision
    blockers, verdict = _versus_champion(
        decision,
        challenger_metrics,
        champion_metrics,
        min_improvement,
        regression_tolerance,
        versus_champion,
    )
    blockers[:0] = ([base_line] if base_blocks else []) + majority_blocks
    decision.promote = not blockers
    decision.reasons = blockers or [verdict]
    # The base and majority comparisons are always stated: as blockers, or after the rest.
    decision.reasons += [r for r in base_reasons if r not in blockers]
    return decision


def _versus_champion(
    decision: GateDecision,
    challenger_metrics: dict[str, float],
    champion_metrics: dict[str, float] | None,
    min_improvement: float,
    regression_tolerance: float,
    interval: Interval | None = None,
) -> tuple[list[str], str]:
    """What stops the challenger replacing the champion, and the reason to promote if nothing does."""
    metric, score = decision.primary_metric, decision.challenger_score
    if decision.champion is None or champion_metrics is None:
        return [], "no champion yet: the first eligible version becomes champion"
    best = decision.champion_score = champion_metrics.get(metric)
    if not _finite(best):
        return [], f"champion has no finite {metric!r}: challenger replaces it"

    blockers = []
    gain = score - best
    compared = f"{metric} {score:.4f} vs champion {best:.4f}: {_gain_text(gain, interval)}"
    if not _gains(gain, interval, min_improvement):
        blockers.append(f"{compared}, needs {_needed(interval, min_improvement)}")
    for key in sorted(challenger_metrics):
        if not key.startswith(CATEGORY_PREFIX) or not _finite(champion_metrics.get(key)):
            continue
        drop = champion_metrics[key] - challenger_metrics[key]
        if drop > regression_tolerance:
            blockers.append(
                f"{key} regressed {champion_metrics[key]:.4f} -> {challenger_metrics[key]:.4f} "
                f"(drop {drop:.4f} > tolerance {regression_tolerance:.4f})"
            )
    by = (
        f"{gain:+.4f}" if interval is None else f"{interval.describe()} over {interval.items} items"
    )
    return blockers, (
        f"{metric} {score:.4f} beats champion {best:.4f} by {by}; "
        f"no category dropped more than {regression_tolerance:.4f}"
    )


def run_gate(
    tracker: Tracker,
    name: str,
    challenger_version: str,
    *,
    primary_metric: str,
    min_improvement: float,
    regression_tolerance: float,
    base_metrics: dict[str, float] | None = None,
    must_beat_base: bool = False,
    versus_base: Interval | None = None,
    versus_champion: Interval | None = None,
    versus_majority: dict[str, Interval] | None = None,
    must_beat_majority: bool = False,
    notes: tuple[str, ...] = (),
) -> GateDecision:
    """Compare a registered challenger with the current champion (and the base model, given
    `base_metrics`); move the alias if it wins. `notes` join the decision's reasons (the
    pipeline says there why a comparison has no interval).

    Metrics are read from each version's runs (the mean over its arm's seeds); the base
    model has no version, so the caller passes its metrics (the pipeline's base
    evaluation), and the intervals of the challenger's gain when it has them. The decision is tagged
    on the challenger version, unless it is already the champion (a rerun), so the
    version keeps the record of why it was promoted; `record_decision` tags the parent run.
    """
    challenger = get_version(tracker, name, challenger_version)
    champion = version_by_alias(tracker, name, CHAMPION)
    decision = decide(
        str(challenger.version),
        version_metrics(tracker, challenger),
        str(champion.version) if champion else None,
        version_metrics(tracker, champion) if champion else None,
        primary_metric=primary_metric,
        min_improvement=min_improvement,
        regression_tolerance=regression_tolerance,
        base_metrics=base_metrics,
        must_beat_base=must_beat_base,
        versus_base=versus_base,
        versus_champion=versus_champion,
        versus_majority=versus_majority,
        must_beat_majority=must_beat_majority,
    )
    decision.reasons += list(notes)
    if decision.challenger != decision.champion:
        # A rerun that finds its challenger already champion keeps the tags of the
        # decision that made it champion; the rerun's parent run still records it.
        tracker.set_version_tags(name, str(challenger.version), decision.as_tags())
    if decision.promote:
        promote(tracker, name, str(challenger.version))
    return decision


def record_decision(tracker: Tracker, run_id: str, decision: GateDecision) -> None:
    """Tag a run (the pipeline's parent run) with the gate's decision and reasons."""
    tracker.set_tags(run_id, decision.as_tags())


def promote(tracker: Tracker, name: str, version: str) -> str | None:
    """Point `champion` at `version`, remembering the previous champion for rollback.

    Returns the previous champion's version (None when there was none).
    """
    _registered_model(tracker, name)  # an unknown model is named as such, not as a version
    get_version(tracker, name, version)  # fails clearly on an unknown version
    current = version_by_alias(tracker, name, CHAMPION)
    if current is not None and str(current.version) != str(version):
        tracker.set_model_tag(name, PREVIOUS_TAG, str(current.version))
    set_alias(tracker, name, CHAMPION, version)
    return str(current.version) if current else None


def rollback(tracker: Tracker, name: str) -> str:
    """Give `champion` back to the version that held it before the last promotion.

    The version rolled back from becomes the "previous" one, so a second
    rollback undoes the first. Returns the restored version.
    """
    previous = _registered_model(tracker, name).tags.get(PREVIOUS_TAG)
    if not previous:
        raise RegistryError(
            f"{name!r} has no previous champion to roll back to",
            fix="promote a version explicitly with `mlora promote NAME VERSION`",
        )
    get_version(tracker, name, previous)  # it may have been deleted since
    current = version_by_alias(tracker, name, CHAMPION)
    set_alias(tracker, name, CHAMPION, previous)
    if current is not None:
        tracker.set_model_tag(name, PREVIOUS_TAG, str(current.version))
    return previous


def _registered_model(tracker: Tracker, name: str):
    found = tracker.registered_model(name)
    if found is None:
        raise RegistryError(
            f"no registered model named {name!r}",
            fix="run the pipeline first, or check the name in the MLflow UI (mlora ui)",
        )
    return found
