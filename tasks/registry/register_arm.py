"""The register stage of one arm: its adapter as a version of the spec's registered model
(once per run key), with the arm's mean scores and the tags that say which seed it holds and
why, and every seed run finished and recorded in the catalog."""

from __future__ import annotations

from pathlib import Path

from multilora_pipeline.data_specs import metrics as names
from multilora_pipeline.tasks.catalog import Catalog
from multilora_pipeline.tasks.evaluation.arm_outcome import ArmOutcome
from multilora_pipeline.tasks.identity import run_key
from multilora_pipeline.tasks.registry.versions import (
    RegisteredVersion,
    get_version,
    register_adapter,
    update_version_scores,
)
from multilora_pipeline.tasks.run_context import RunContext
from multilora_pipeline.tasks.training.arm_runs import ArmRun
from multilora_pipeline.tasks.training.base_model import load_revision


def register_arm(ctx: RunContext, outcome: ArmOutcome) -> RegisteredVersion:
    """Register the arm's adapter (once per run key): with several seeds, the adapter of the
    seed `ArmOutcome.version_run` picks, with the arm's mean scores and tags that say which
    seed it holds and why. A version registered earlier whose arm was just scored again
    under new evaluation settings gets the new headline scores. Finishes every seed run."""
    ws, tracker, spec, data, lineage = ctx.ws, ctx.tracker, ctx.spec, ctx.data, ctx.lineage
    arm, chosen = outcome.arm, outcome.version_run
    result, run_id = chosen.trained.result, chosen.trained.run_id
    metrics = outcome.metrics
    manifest = Path(data.train_dir) / "manifest.json"
    extra = {"mixture_manifest": str(manifest)} if manifest.is_file() else {}
    # The version's headline: its primary metric, categories, and each multiple-choice
    # suite's accuracy beside what it is read against (majority, chance, balanced accuracy).
    read_against = {
        names.suite_metric(s.name, kind)
        for s in spec.eval_suites
        if s.kind == "multiple_choice"
        for kind in ("acc", names.BALANCED_ACC, *names.BASELINES)
    }
    headline = {
        k: f"{v:.4f}"
        for k, v in metrics.items()
        if k == spec.registry.primary_metric
        or k.startswith(names.CATEGORY_PREFIX)
        or k in read_against
    }
    version = register_adapter(
        tracker,
        name=spec.registered_model_name,
        run_id=run_id,
        run_key=run_key(spec, data.mixture_id, ArmRun(arm, spec.training.for_run(chosen.seed))),
        adapter_dir=result.adapter_dir,
        peft_dir=result.peft_dir,
        base_model=ctx.base,
        base_is_local=spec.base_model.tiny is not None,
        model_config={
            "kind": arm.kind,
            "revision": load_revision(spec),
            "trust_remote_code": spec.base_model.trust_remote_code,
            "max_new_tokens": spec.evaluation.max_new_tokens,
            "prompt_format": lineage.prompt_format,
        },
        extra_artifacts=extra,
        tags={
            **lineage.version_tags(arm=arm.name, adapter_kind=arm.kind),
            **outcome.version_tags(spec.training),
            **headline,
        },
    )
    if version.reused:
        tracker.set_version_tags(version.name, version.version, outcome.version_tags(spec.training))
        stored = get_version(tracker, version.name, version.version).tags
        if any(stored.get(k) != v for k, v in headline.items()):  # re-scored, or other seeds
            update_version_scores(tracker, version.name, version.version, headline)
    catalog = Catalog(ws.catalog_path)
    for seed_run in outcome.runs:
        seed_run_id = seed_run.trained.run_id
        tracker.finish(seed_run_id)
        registered = seed_run is chosen
        catalog.record_run(
            spec_hash=spec.spec_hash,
            mixture_id=data.mixture_id,
            arm=arm.name,
            mlflow_run_id=seed_run_id,
            parent_run_id=tracker.run_tags(seed_run_id).get("mlflow.parentRunId"),
            registered_model=version.name if registered else None,
            model_version=version.version if registered else None,
        )
    return version
