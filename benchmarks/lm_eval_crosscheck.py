"""lm-evaluation-harness against the pipeline, on a workspace's registered versions.

    python benchmarks/lm_eval_crosscheck.py data_specs/demo.yaml --workspace WS

writes the spec's suites as lm-eval tasks (`mlora lm-eval-tasks`), runs lm_eval 0.4.x on
every version of the spec's registered model (its own PEFT export, downloaded from
MLflow), and prints JSON: per version and multiple-choice suite, lm-eval's acc / acc_norm
beside the pipeline's (the version's run metrics) and how many items apart they are.
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
    from multilora_pipeline.tasks.evaluation.lm_eval_tasks import run_lm_eval

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
    report = {"spec": spec.name, "prompt_format": written["prompt_format"], "versions": []}
    for version in client.search_model_versions(f"name = '{spec.registered_model_name}'"):
        local = mlflow.artifacts.download_artifacts(
            f"models:/{version.name}/{version.version}", dst_path=str(out / str(version.version))
        )
        started = time.perf_counter()
        peft = str(Path(local) / "artifacts" / "peft")
        results = run_lm_eval(written["base_model"], peft, out / "tasks", mc)
        ours = client.get_run(version.run_id).data.metrics
        suites = {}
        for task in mc:
            suite = written["tasks"][task]["suite"]
            theirs = results["results"][task]
            items = written["tasks"][task]["items"]
            suites[suite] = {"items": items}
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
