"""lm-evaluation-harness against the pipeline, on a workspace's registered versions.

    python benchmarks/lm_eval_crosscheck.py data_specs/real.yaml --workspace WS

writes the spec's suites as lm-eval tasks (`mlora lm-eval-tasks`), runs lm_eval 0.4.x on
every version of the spec's registered model (its own PEFT export, downloaded from
MLflow) with the flags `mlora lm-eval-tasks` prints (a chat run: lm-eval's standard
`--apply_chat_template`, plain choices), and prints JSON: per version and multiple-choice
suite, lm-eval's acc / acc_norm beside the pipeline's (the version's run metrics), and,
item by item against the version's prediction table, how many items' acc and acc_norm
differ and the largest log-likelihood difference of any choice.
Needs a workspace where `mlora run SPEC` finished; lm-eval is a dev dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _item_by_item(samples: list[dict], predictions, suite: str) -> dict:
    """How many items lm-eval's per-item acc / acc_norm differ from the pipeline's, and the
    largest log-likelihood difference of any choice."""
    mine = predictions[predictions["suite"] == suite].reset_index(drop=True)
    theirs = sorted(samples, key=lambda s: s["doc"]["item"])
    apart = {"acc": 0, "acc_norm": 0}
    worst = 0.0
    for sample, (_, row) in zip(theirs, mine.iterrows(), strict=True):
        apart["acc"] += sample["acc"] != float(row["correct"])
        apart["acc_norm"] += sample["acc_norm"] != float(row["correct_norm"])
        lls = [float(r[0]) for r in sample["filtered_resps"]]
        worst = max(
            worst, *(abs(a - b) for a, b in zip(lls, json.loads(row["choice_loglik"]), strict=True))
        )
    return {
        "items_compared": len(theirs),
        "acc_items_differing": apart["acc"],
        "acc_norm_items_differing": apart["acc_norm"],
        "max_loglik_difference": round(worst, 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--workspace", required=True)
    args = parser.parse_args()

    from multilora_pipeline.tasks.workspace import Workspace

    ws = Workspace.resolve(args.workspace).activate()  # before Prefect is imported
    import mlflow
    from mlflow import MlflowClient

    from multilora_pipeline.data_specs.schema import load_spec
    from multilora_pipeline.flows.lm_eval_export import lm_eval_tasks_flow
    from multilora_pipeline.tasks.evaluation.arm_scores import PREDICTIONS
    from multilora_pipeline.tasks.evaluation.lm_eval_tasks import run_lm_eval
    from multilora_pipeline.tasks.registry.tracking import Tracker

    spec, _ = load_spec(args.spec)
    out = Path(tempfile.mkdtemp(prefix="mlora-lm-eval-"))
    written = lm_eval_tasks_flow(args.spec, str(out / "tasks"), str(ws.root))
    mc = [
        t
        for t in written["tasks"]
        if next(s for s in spec.eval_suites if s.name == written["tasks"][t]["suite"]).kind
        == "multiple_choice"
    ]
    mlflow.set_tracking_uri(ws.tracking_uri)
    client = MlflowClient(ws.tracking_uri, ws.tracking_uri)
    tracker = Tracker(ws, spec.name)
    report = {"spec": spec.name, "prompt_format": written["prompt_format"], "versions": []}
    for version in client.search_model_versions(f"name = '{spec.registered_model_name}'"):
        local = mlflow.artifacts.download_artifacts(
            f"models:/{version.name}/{version.version}", dst_path=str(out / str(version.version))
        )
        started = time.perf_counter()
        peft = str(Path(local) / "artifacts" / "peft")
        chat = written["prompt_format"] == "chat"
        results = run_lm_eval(
            written["base_model"], peft, out / "tasks", mc, chat=chat, log_samples=True
        )
        ours = client.get_run(version.run_id).data.metrics
        predictions = tracker.load_table(version.run_id, PREDICTIONS)
        suites = {}
        for task in mc:
            suite = written["tasks"][task]["suite"]
            theirs = results["results"][task]
            items = written["tasks"][task]["items"]
            suites[suite] = {
                "items": items,
                **_item_by_item(results["samples"][task], predictions, suite),
            }
            for m in ("acc", "acc_norm"):
                a, b = theirs[f"{m},none"], ours.get(f"{suite}_{m}")
                suites[suite].update(
                    {
                        f"{m}_lm_eval": a,
                        f"{m}_pipeline": b,
                        f"{m}_items_apart": None if b is None else round(abs(a - b) * items),
                    }
                )
        report["versions"].append(
            {
                "version": str(version.version),
                "arm": version.tags.get("arm"),
                "lm_eval_seconds": round(time.perf_counter() - started, 1),
                "suites": suites,
            }
        )
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    main()
