"""The summary `mlora run` prints: the table of base and arms (seed means ± spread) under
chance and the majority answer, the paired intervals of every comparison (against the
base, between arms, against the majority answer), the learning rates chosen, and the
gate's decision.
It reads the dict `pipeline_flow` returns (also what `--summary-json` writes)."""

from __future__ import annotations

from multilora_pipeline.data_specs import metrics as metric_names


def summary_columns(summary: dict) -> list[str]:
    """Primary metric, each suite's headline score, held-out loss (the rest is in MLflow)."""
    primary = summary["primary_metric"]
    names = {k for arm in summary["arms"] for k in arm["metrics"]}
    scores = tuple(f"_{kind}" for kind in metric_names.SUITE_SCORES)
    suites = sorted(k for k in names if k.endswith(scores) and k != primary)
    return [c for c in (primary, *suites, metric_names.HELD_OUT_LOSS) if c in names]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _value(value: float | None, sd: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if sd is None else f"{value:.4f} ± {sd:.4f}"


def _interval(found: dict | None) -> str:
    if not found:
        return "-"
    return f"{found['estimate']:+.4f} [{found['low']:+.4f}, {found['high']:+.4f}]"


def score_table(summary: dict) -> str:
    """Chance and the majority answer, then base and arms: version, seeds, learning rate,
    and the headline metrics (mean ± sd over seeds when an arm has several)."""
    metrics = summary_columns(summary)
    rows = [["model", "version", "seeds", "lr", *metrics]]
    # What every score is read against, from the suites' own labels (multiple choice only).
    for name, rates in summary.get("baselines", {}).items():
        if rates:
            rows.append([name, "-", "-", "-", *[_value(rates.get(m)) for m in metrics]])
    rows.append(["base", "-", "-", "-", *[_value(summary["base_metrics"].get(m)) for m in metrics]])
    for arm in summary["arms"]:
        several = len(arm["seeds"]) > 1
        rows.append(
            [
                arm["arm"],
                str(arm["version"]),
                ",".join(str(s) for s in arm["seeds"]),
                f"{arm['learning_rate']:g}",
                *[
                    _value(arm["metrics"].get(m), arm["metrics_sd"].get(m) if several else None)
                    for m in metrics
                ],
            ]
        )
    return _table(rows)


def interval_table(summary: dict) -> str:
    """Every arm minus the base, every arm minus every other, and every model minus always
    giving the majority answer, with the paired interval."""
    metrics = list(summary["arms"][0]["versus_base"]) if summary["arms"] else []
    rows = [["comparison", *metrics]]
    for arm in summary["arms"]:
        rows.append(
            [f"{arm['arm']} - base", *[_interval(arm["versus_base"].get(m)) for m in metrics]]
        )
    pairs: dict[str, dict] = {}
    for row in summary.get("between_arms", []):
        pairs.setdefault(row["arms"], {})[row["metric"]] = row
    against: dict[str, dict] = {}
    for row in summary.get("versus_majority", []):
        against.setdefault(f"{row['model']} - majority", {})[row["metric"]] = row
    for name, by in [*pairs.items(), *against.items()]:
        rows.append([name, *[_interval(by.get(m)) for m in metrics]])
    return _table(rows)


def _choices(summary: dict) -> list[str]:
    lines = []
    for arm in summary["arms"]:
        if arm["probes"]:
            probed = ", ".join(
                f"{p['learning_rate']:g}"
                + (f"/{p['scale_learning_rate']:g}" if p["scale_learning_rate"] else "")
                + f" {_value(p['eval_loss'])}"
                for p in arm["probes"]
            )
            lines.append(
                f"  {arm['arm']}: learning rate {arm['learning_rate']:g}, the lowest held-out "
                f"loss of the probes ({probed})"
            )
        if len(arm["seeds"]) > 1:
            lines.append(
                f"  {arm['arm']} v{arm['version']} holds the adapter of seed {arm['version_seed']}, "
                "the lowest held-out loss of its seeds; its scores are the seed mean"
            )
    return lines


def format_summary(summary: dict) -> str:
    reused = ", ".join(summary["reused_data_stages"]) or "none"
    choices = _choices(summary)
    return "\n".join(
        [
            f"pipeline {summary['spec']}  spec {summary['spec_hash']}  mixture {summary['mixture_id']}",
            f"data stages reused: {reused}; base evaluation "
            + ("reused" if summary.get("base_evaluation_reused") else "scored"),
            f"prompt format (base and arms): {summary['prompt_format']}",
            "",
            score_table(summary),
            "",
            f"gains with 95% intervals (paired bootstrap over items, "
            f"{summary['bootstrap_resamples']} resamples; an interval that contains 0 "
            "shows no clear difference):",
            interval_table(summary),
            *(["", "chosen:", *choices] if choices else []),
            "",
            f"registered model {summary['registered_model']}: challenger v{summary['challenger']}, "
            f"champion {'v' + summary['champion'] if summary['champion'] else 'none'} "
            f"({summary['decision']})",
            *[f"  gate: {reason}" for reason in summary["decision_reasons"]],
            "stage times: "
            + ", ".join(f"{k} {v:.0f}s" for k, v in summary["stage_seconds"].items()),
            f"MLflow parent run {summary['parent_run_id']} in experiment '{summary['experiment']}'",
            f"see it in the MLflow UI: {summary['ui_command']}  (then open http://127.0.0.1:5000)",
        ]
    )
