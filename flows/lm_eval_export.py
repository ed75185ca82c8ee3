"""`mlora lm-eval-tasks SPEC DIR`: the spec's suites as lm-evaluation-harness tasks.

The data stages run (reused when done) so the suites are the pipeline's own normalised
items, the base model is prepared (a GGUF file converted once, as `mlora run` does) for
its tokenizer and prompt format, and tasks/evaluation/lm_eval_tasks.py writes one task
per suite. DIR/README.md says how to run lm_eval on a registered version.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from multilora_pipeline.data_specs.schema import load_spec
from multilora_pipeline.flows.data import run_data_stages
from multilora_pipeline.tasks.evaluation.lm_eval_tasks import (
    lm_eval_flags,
    model_args,
    write_lm_eval_tasks,
)
from multilora_pipeline.tasks.evaluation.suites import LM_EVAL_VERSION
from multilora_pipeline.tasks.training.base_model import (
    base_model_path,
    check_base_model,
    load_revision,
    prompt_format,
)
from multilora_pipeline.tasks.workspace import Workspace


def lm_eval_command(
    base: str, revision: str | None, tasks: list[str], out_dir: Path, chat: bool
) -> str:
    """The lm_eval command line for a version whose PEFT export is at $PEFT."""
    args = ",".join(f"{k}={v}" for k, v in model_args(base, "$PEFT", revision, chat).items())
    flags = "".join(f" {f}" for f in lm_eval_flags(chat))
    return (
        f"lm_eval --model hf{flags} --model_args {args} --include_path {out_dir} "
        f"--tasks {','.join(tasks)} --batch_size 1"
    )


def _readme(spec_name: str, registered: str, command: str, fmt: str, tasks) -> str:
    how = (
        [
            "Each task holds the items the pipeline scores, with their few-shot exemplars, as the",
            "user turn, and the suite's header as the task description; lm-eval renders the",
            "chat template itself: run it with --apply_chat_template (and no --num_fewshot).",
            'The choices are plain ("yes", "A"): under a chat template lm-eval drops the',
            "space before a choice, as the pipeline does.",
        ]
        if fmt == "chat"
        else [
            "Each task holds the items the pipeline scores, with their few-shot exemplars and",
            "the bos token already in the context: run it with no --num_fewshot and no",
            "--apply_chat_template.",
        ]
    )
    lines = [
        f"# lm-evaluation-harness tasks for spec `{spec_name}`",
        "",
        f"Written by `mlora lm-eval-tasks` for lm-eval {LM_EVAL_VERSION}, prompt format `{fmt}`.",
        *how,
        "",
        "A registered version's PEFT export (or an arm's peft/ in the workspace):",
        "",
        f"    mlflow artifacts download -u models:/{registered}/VERSION -d version",
        "    PEFT=version/artifacts/peft",
        f"    {command}",
        "",
        "| task | suite | items | metrics |",
        "|---|---|---|---|",
        *(f"| {t.task} | {t.suite} | {t.items} | {', '.join(t.metrics)} |" for t in tasks),
        "",
        "The data files are named by absolute path in the YAMLs: write the tasks again after",
        "moving this folder.",
        "",
    ]
    return "\n".join(lines)


@flow(name="mlora-lm-eval-tasks", log_prints=True)
def lm_eval_tasks_flow(spec_path: str, out_dir: str, workspace_root: str | None = None) -> dict:
    """Write the spec's suites as lm-eval tasks in `out_dir`; returns what was written and
    the command that runs them."""
    ws = Workspace.resolve(workspace_root).ensure()
    spec, spec_dir = load_spec(spec_path)
    check_base_model(spec, Path(spec_path).resolve(), ws=ws)
    data = run_data_stages(spec, spec_dir, ws)
    base = base_model_path(spec, data.train_dir, data.mixture_id, ws)
    fmt = prompt_format(spec, base)
    out = Path(out_dir).resolve()
    written = write_lm_eval_tasks(data.suites(spec), spec.evaluation, fmt, out)
    chat = fmt.kind == "chat"
    command = lm_eval_command(base, load_revision(spec), [t.task for t in written], out, chat)
    readme = out / "README.md"
    readme.write_text(
        _readme(spec.name, spec.registered_model_name, command, fmt.kind, written),
        encoding="utf-8",
    )
    return {
        "base_model": base,
        "prompt_format": fmt.kind,
        "tasks": {
            t.task: {"suite": t.suite, "items": t.items, "yaml": str(t.yaml_path)} for t in written
        },
        "command": command,
        "readme": str(readme),
    }
