"""The promote stage: a champion/challenger gate over registered versions.

The challenger replaces the champion only if it beats it on the primary
metric by at least `min_improvement` and no category score drops by more than
`regression_tolerance`. With no champion yet, the challenger is promoted.
The decision and its reasons become tags on the version and the parent run.
Manual promotion and rollback go through the same alias bookkeeping: the
champion's previous holder is remembered in a model tag, so rollback is one
call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.registry import CHAMPION, get_version, set_alias, version_by_alias
from tasks.tracking import Tracker

CATEGORY_PREFIX = "category_"
PREVIOUS_TAG = "mlora.previous_champion"


@dataclass
class GateDecision:
    promote: bool
    challenger: str
    champion: str | None
    primary_metric: str
    challenger_score: float | None
    champion_score: float | None
    reasons: list[str] = field(default_factory=list)

    def as_tags(self) -> dict[str, str]:
        return {
            "promotion.decision": "promoted" if self.promote else "kept_champion",
            "promotion.reasons": "; ".join(self.reasons),
            "promotion.compared_with": self.champion or "none",
        }

    def markdown(self) -> str:
        verdict = "**promoted** to champion" if self.promote else "**not promoted**"
        lines = [f"### Promotion gate: version {self.challenger} {verdict}", "",
                 f"- primary metric `{self.primary_metric}`: challenger "
                 f"{_fmt(self.challenger_score)}, champion {_fmt(self.champion_score)}"]
        lines += [f"- {r}" for r in self.reasons]
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def decide(
    challenger: str,
    challenger_metrics: dict[str, float],
    champion: str | None,
    champion_metrics: dict[str, float] | None,
    *,
    primary_metric: str,
    min_improvement: float,
    regression_tolerance: float,
) -> GateDecision:
    """Pure gate logic: metrics in, decision and reasons out."""
    score = challenger_metrics.get(primary_metric)
    if score is None:
        return GateDecision(False, challenger, champion, primary_metric, None, None,
                            [f"challenger has no metric {primary_metric!r}"])
    if champion is None or champion_metrics is None:
        return GateDecision(True, challenger, None, primary_metric, score, None,
                            ["no champion yet: the first eligible version becomes champion"])
    best = champion_metrics.get(primary_metric)
    decision = GateDecision(False, challenger, champion, primary_metric, score, best)
    if challenger == champion:
        decision.reasons.append("challenger is already the champion")
        return decision
    if best is None:
        decision.promote = True
        decision.reasons.append(f"champion has no metric {primary_metric!r}")
        return decision
    gain = score - best
    if gain < min_improvement or gain <= 0 and min_improvement == 0:
        decision.reasons.append(
            f"{primary_metric} {score:.4f} vs champion {best:.4f}: gain {gain:+.4f} "
            f"is below the required {min_improvement:+.4f} (must be strictly better)"
            if min_improvement == 0 else
            f"{primary_metric} {score:.4f} vs champion {best:.4f}: gain {gain:+.4f} "
            f"is below the required {min_improvement:+.4f}"
        )
    regressions = [
        f"{key} dropped {champion_metrics[key]:.4f} -> {value:.4f} "
        f"(more than the tolerance {regression_tolerance})"
        for key, value in sorted(challenger_metrics.items())
        if key.startswith(CATEGORY_PREFIX) and key in champion_metrics
        and champion_metrics[key] - value > regression_tolerance
    ]
    decision.reasons += regressions
    if not decision.reasons:
        decision.promote = True
        decision.reasons.append(
            f"{primary_metric} {score:.4f} beats champion {best:.4f} by {gain:+.4f} "
            f"with no category regressing more than {regression_tolerance}"
        )
    return decision


def run_gate(tracker: Tracker, name: str, challenger_version: str, *, primary_metric: str,
             min_improvement: float, regression_tolerance: float) -> GateDecision:
    """Compare a registered challenger with the current champion; move the alias if it wins."""
    challenger = get_version(tracker, name, challenger_version)
    champion = version_by_alias(tracker, name, CHAMPION)
    decision = decide(
        str(challenger.version), tracker.metrics(challenger.run_id),
        str(champion.version) if champion else None,
        tracker.metrics(champion.run_id) if champion else None,
        primary_metric=primary_metric, min_improvement=min_improvement,
        regression_tolerance=regression_tolerance,
    )
    for key, value in decision.as_tags().items():
        tracker.client.set_model_version_tag(name, str(challenger.version), key, value)
    if decision.promote:
        promote(tracker, name, str(challenger.version))
    return decision


def promote(tracker: Tracker, name: str, version: str) -> str | None:
    """Point `champion` at `version`, remembering the previous champion for rollback."""
    get_version(tracker, name, version)  # fails clearly on an unknown version
    current = version_by_alias(tracker, name, CHAMPION)
    if current is not None and str(current.version) != str(version):
        tracker.client.set_registered_model_tag(name, PREVIOUS_TAG, str(current.version))
    set_alias(tracker, name, CHAMPION, version)
    return str(current.version) if current else None


def rollback(tracker: Tracker, name: str) -> str:
    """Give `champion` back to the version that held it before the last promotion."""
    from data_specs.errors import RegistryError

    model = tracker.client.get_registered_model(name)
    previous = model.tags.get(PREVIOUS_TAG)
    if not previous:
        raise RegistryError(f"{name!r} has no previous champion to roll back to",
                            fix="promote a version explicitly with `mlora promote NAME VERSION`")
    current = version_by_alias(tracker, name, CHAMPION)
    set_alias(tracker, name, CHAMPION, previous)
    if current is not None:
        tracker.client.set_registered_model_tag(name, PREVIOUS_TAG, str(current.version))
    return previous
