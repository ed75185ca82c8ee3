"""Several seeds and a learning-rate grid, through the whole DAG on the reduced demo: probes
chosen on the validation split only, one run per seed on one mixture, seed means with
spread, paired intervals, and a version that says which seed's adapter it holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from mlflow import MlflowClient

from multilora_pipeline.flows.run_report import format_summary
from multilora_pipeline.tasks.evaluation.cache import EVAL_ID_TAG
from multilora_pipeline.tasks.workspace import Workspace
from tests.flows.counting_scorer import CountingScorer
from tests.specs import reduced_demo, write_spec

pytestmark = pytest.mark.slow  # whole pipeline runs

SEEDS = [0, 1]
GRID = [1e-4, 3e-3]


@pytest.fixture(scope="module")
def runs(prefect_harness, tmp_path_factory):
    """The reduced demo with two seeds and a two-point grid for the lora arm, run twice."""
    import multilora_pipeline.flows.pipeline as pipeline
    import multilora_pipeline.tasks.evaluation.arm_scores as arm_scores

    tmp = tmp_path_factory.mktemp("seeds")
    spec = reduced_demo()
    spec["training"]["seeds"] = SEEDS
    spec["arms"][1]["learning_rates"] = GRID
    path = write_spec(spec, tmp / "seeds.yaml")
    ws = Workspace.resolve(tmp / "workspace")
    scorer = CountingScorer(arm_scores.evaluate_model)
    summaries = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(arm_scores, "evaluate_model", scorer)
        for _ in range(2):
            scorer.calls.append(0)
            summaries.append(pipeline.pipeline_flow(str(path), str(ws.root)))
    client = MlflowClient(ws.tracking_uri, ws.tracking_uri)
    return ws, client, summaries, scorer.calls


def _children(client, summary):
    parent = client.get_run(summary["parent_run_id"])
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'",
    )


def test_probes_choose_on_the_validation_split_and_never_on_the_suites(runs):
    _, client, (first, _), scorings = runs
    # Base once, then each arm once per seed: no probe is ever scored on the suites.
    assert scorings[0] == 1 + 2 * len(SEEDS)
    children = _children(client, first)
    probes = [r for r in children if r.data.tags.get("mlora.lr_probe") == "true"]
    assert sorted(r.data.tags["mlora.arm"] for r in probes) == ["lora", "lora"]
    losses = {
        float(r.data.params["arm.learning_rate"]): r.data.metrics["final_eval_loss"] for r in probes
    }
    lora = next(a for a in first["arms"] if a["arm"] == "lora")
    assert lora["learning_rate"] == min(losses, key=losses.get)
    assert [p["learning_rate"] for p in lora["probes"]] == GRID
    losing = [
        r for r in probes if float(r.data.params["arm.learning_rate"]) != lora["learning_rate"]
    ]
    assert len(losing) == 1
    assert EVAL_ID_TAG not in losing[0].data.tags
    assert not any(k.endswith("_acc") or k == "eval_macro_acc" for k in losing[0].data.metrics)
    multilora = next(a for a in first["arms"] if a["arm"] == "multilora")
    assert multilora["probes"] == []


def _adapter_digest(client, run_id: str, folder: Path) -> str:
    local = Path(client.download_artifacts(run_id, "adapter", str(folder)))
    files = sorted(p for p in local.rglob("*.safetensors"))
    assert files
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def test_seeds_give_different_adapters_on_the_same_mixture(runs, tmp_path):
    _, client, (first, _), _ = runs
    seed_runs = [r for r in _children(client, first) if r.data.tags["mlora.arm"] == "multilora"]
    assert sorted(r.data.tags["mlora.seed"] for r in seed_runs) == ["0", "1"]
    assert {r.data.tags["mlora.mixture_id"] for r in seed_runs} == {first["mixture_id"]}
    digests = {_adapter_digest(client, r.info.run_id, tmp_path / r.info.run_id) for r in seed_runs}
    assert len(digests) == 2
    # The summary's numbers are the seed means, with their spread.
    arm = next(a for a in first["arms"] if a["arm"] == "multilora")
    per_seed = [r.data.metrics["val_loss"] for r in seed_runs]
    assert arm["metrics"]["val_loss"] == pytest.approx(sum(per_seed) / 2)
    assert arm["metrics_sd"]["val_loss"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5)


def test_the_version_holds_the_seed_with_the_lowest_held_out_loss_and_says_so(runs):
    _, client, (first, _), _ = runs
    for arm in first["arms"]:
        version = client.get_model_version(first["registered_model"], arm["version"])
        seed_runs = version.tags["mlora.seed_runs"].split(",")
        assert len(seed_runs) == 2 and version.run_id in seed_runs
        losses = {r: client.get_run(r).data.metrics["val_loss"] for r in seed_runs}
        assert version.run_id == min(losses, key=losses.get)
        assert version.tags["mlora.seeds"] == "0,1"
        assert "lowest held-out loss" in version.tags["mlora.seed_choice"]
        assert "Adapter of seed" in version.description


def test_intervals_reach_the_summary_the_parent_run_and_the_gate(runs):
    _, client, (first, _), _ = runs
    for arm in first["arms"]:
        found = arm["versus_base"]["eval_macro_acc"]
        assert found["low"] <= found["estimate"] <= found["high"]
        assert found["resamples"] == 1000
    assert {r["arms"] for r in first["between_arms"]} == {"multilora - lora"}
    parent = client.get_run(first["parent_run_id"])
    assert "multilora_vs_base_eval_macro_acc_low" in parent.data.metrics
    assert "multilora_vs_lora_eval_macro_acc_high" in parent.data.metrics
    assert "multilora_eval_macro_acc_sd" in parent.data.metrics
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/suite_scores.png", "plots/lr_probes.png"} <= plots
    assert "eval/intervals.json" in {
        a.path for a in client.list_artifacts(parent.info.run_id, "eval")
    }
    assert "95% CI" in parent.data.tags["promotion.reasons"]
    text = format_summary(first)
    assert "multilora - lora" in text and " ± " in text
    assert "learning rate" in text and "holds the adapter of seed" in text and "contains 0" in text


def test_a_rerun_reuses_probes_seed_runs_scores_and_versions(runs):
    _, client, (first, second), scorings = runs
    assert scorings[1] == 0  # base from the cache, arms' scores and items from their runs
    assert all(a["reused"] for a in second["arms"])
    assert [a["version"] for a in second["arms"]] == [a["version"] for a in first["arms"]]
    assert second["arms"][0]["versus_base"] == first["arms"][0]["versus_base"]
    assert _children(client, second) == []  # every run was found, none created
    versions = client.search_model_versions(f"name = '{first['registered_model']}'")
    assert len(versions) == 2
