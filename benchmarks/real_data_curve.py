"""How many steps it takes to read real BoolQ: held-out accuracy and balanced accuracy of an
arm against training steps, beside the majority rate, on data_specs/real.yaml's data.

    PYTHONPATH=. python benchmarks/real_data_curve.py --arm lora --steps 150 --every 25 \\
        --workspace /tmp/curve-ws

Runs the spec's data stages (`mlora data`), trains the arm with the pipeline's own trainer
(tasks/training/train.py: the spec's training settings, `--steps` instead of max_steps,
a constant learning rate after warm-up so the curve is not the cosine's) on every
training row the data stages keep (`mixture.strategy: proportional`, no size cap: on
real.yaml ~920 BoolQ and 28 MMLU rows instead of the demo's 280), and every `--every` steps scores the spec's suites
with the pipeline's evaluation (tasks/evaluation/evaluate.py: acc, balanced accuracy,
majority and chance). The curve is logged to MLflow in the workspace (experiment
`<spec>-curve`, one run per arm: each suite metric at each step, the plot
`plots/suite_curve.png`) and printed as JSON lines, then one JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="data_specs/real.yaml")
    parser.add_argument("--arm", default="lora")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--workspace", required=True)
    args = parser.parse_args()

    from multilora_pipeline.tasks.workspace import Workspace

    ws = Workspace.resolve(args.workspace).activate()  # before Prefect is imported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    from transformers import TrainerCallback, default_data_collator

    from multilora_pipeline.data_specs.schema import load_spec
    from multilora_pipeline.flows.data import data_flow
    from multilora_pipeline.tasks.evaluation.evaluate import evaluate_model
    from multilora_pipeline.tasks.training.base_model import prepare_base_model
    from multilora_pipeline.tasks.training.train import ArmTrainer, prepare_arm, training_arguments

    spec_path = _every_row_spec(Path(args.spec), ws.root)
    spec, _ = load_spec(spec_path)
    data = data_flow(str(spec_path), str(ws.root))
    base = prepare_base_model(spec, data, ws)
    arm = next(a for a in spec.arms if a.name == args.arm)
    if args.learning_rate:
        arm = arm.model_copy(update={"learning_rate": args.learning_rate})
    training = spec.training.model_copy(
        update={"max_steps": args.steps, "save_steps": 10**6, "eval_steps": 10**6}
    )
    prepared = prepare_arm(
        arm=arm, training=training, model_path=base, train_path=data.train_dir,
        validation_path=None, revision=None, dtype=spec.base_model.dtype,
        trust_remote_code=False, attn_implementation=None, prompt_format=spec.prompt_format,
    )  # fmt: skip
    suites = data.suites(spec)
    curve: list[dict] = []

    def score(step: int) -> None:
        started = time.perf_counter()
        metrics = evaluate_model(
            prepared.model, prepared.fmt, suites, None, spec.evaluation
        ).metrics
        point = {"step": step, "seconds": round(time.perf_counter() - started, 1), **metrics}
        curve.append(point)
        print(json.dumps(point), flush=True)

    class Curve(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step % args.every == 0:
                score(state.global_step)

    out = Path(tempfile.mkdtemp(prefix="mlora-curve-"))
    targs = training_arguments(
        arm, training, out, device=prepared.device, dtype="auto", evaluates=False
    )
    targs.lr_scheduler_type = "constant_with_warmup"
    trainer = ArmTrainer(
        model=prepared.model, args=targs, train_dataset=prepared.train_set, eval_dataset=None,
        data_collator=default_data_collator, callbacks=[Curve()], arm=arm, training=training,
    )  # fmt: skip
    score(0)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started

    names = [s.spec.name for s in suites]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), dpi=110, squeeze=False)
    for panel, suite in zip(axes[0], names, strict=True):
        steps = [p["step"] for p in curve]
        for metric, style in (("acc", "o-"), ("balanced_acc", "s--")):
            panel.plot(steps, [p[f"{suite}_{metric}"] for p in curve], style, label=metric)
        panel.axhline(curve[0][f"{suite}_majority"], color="black", label="majority")
        panel.axhline(curve[0][f"{suite}_chance"], color="grey", linestyle=":", label="chance")
        panel.set(title=suite, xlabel="training step", ylabel="score")
        panel.grid(alpha=0.3)
        panel.legend(fontsize=8)
    fig.suptitle(f"{spec.name}: {arm.name} at lr {arm.learning_rate or training.learning_rate:g}")
    fig.tight_layout()

    mlflow.set_tracking_uri(ws.tracking_uri)
    mlflow.set_experiment(f"{spec.name}-curve")
    with mlflow.start_run(run_name=f"{arm.name}-{args.steps}steps") as run:
        mlflow.log_params({"arm": arm.name, "steps": args.steps, "every": args.every,
                           "learning_rate": arm.learning_rate or training.learning_rate})  # fmt: skip
        for point in curve:
            mlflow.log_metrics(
                {k: v for k, v in point.items() if k not in ("step", "seconds")}, step=point["step"]
            )
        mlflow.log_figure(fig, "plots/suite_curve.png")
    fig.savefig(out / "suite_curve.png")
    summary = {
        "spec": spec.name, "arm": arm.name, "steps": args.steps,
        "train_seconds": round(train_seconds, 1), "sequences": len(prepared.train_set),
        "plot": str(out / "suite_curve.png"), "mlflow_run": run.info.run_id,
        "curve": [{k: p[k] for k in p if k == "step" or k.startswith(tuple(names))} for p in curve],
    }  # fmt: skip
    json.dump(summary, sys.stdout)
    print()


def _every_row_spec(path: Path, root: Path) -> Path:
    """The spec with a proportional, uncapped mixture (every kept row once), written into the
    workspace with its data paths made absolute so they still resolve from there."""
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for entry in raw.get("sources", []) + raw.get("eval_suites", []):
        if "path" in entry and not Path(entry["path"]).is_absolute():
            entry["path"] = str((path.parent / entry["path"]).resolve())
    raw["mixture"] = {"strategy": "proportional",
                      "validation_fraction": raw.get("mixture", {}).get("validation_fraction", 0.1)}  # fmt: skip
    out = root / f"{path.stem}-every-row.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
