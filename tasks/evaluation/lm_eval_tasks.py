"""lm-evaluation-harness tasks that score exactly what the pipeline scores.

`write_lm_eval_tasks` writes, per suite, a data file (`<task>.jsonl`) and a task YAML
(`<task>.yaml`) for lm-eval (LM_EVAL_VERSION), so a user can run the real harness on
any registered version and compare its numbers with the pipeline's:

    lm_eval --model hf --include_path DIR --tasks mlora_boolq,... \\
        --model_args pretrained=BASE,peft=VERSION/artifacts/peft,add_bos_token=False

Each data row holds the item's context already rendered: the suite's header, the few-shot
exemplars, the prompt, the run's prompt format (chat template or plain) and the bos
token as text (lm-eval, given a string that opens with bos and `add_bos_token=False`,
tokenises it with no special tokens added: the pipeline's own token ids, which
`write_lm_eval_tasks` checks item by item). The YAMLs therefore use `num_fewshot: 0` and
no chat template: both are already in the text.

Multiple-choice suites score `acc` and `acc_norm` as the pipeline does. One difference
is lm-eval's and stays: it moves a context's trailing whitespace into the continuation,
and a chat format's context ends with the generation prompt's newline, so under `chat`
every choice of an item gains that newline's log-probability. `acc` is unchanged (the
same constant for each choice); `acc_norm` (divided by the choice's length) can differ
on near ties. Generation suites use lm-eval's gsm8k filters and exact_match settings
(strict-match and flexible-extract); generic ones its regex filter and exact_match with
the pipeline's normalisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.models.content import write_text_atomic
from multilora_pipeline.tasks.evaluation.evaluate import SuiteData, suite_items
from multilora_pipeline.tasks.evaluation.suites import LM_EVAL_VERSION, SuiteFormat

if TYPE_CHECKING:
    from multilora_pipeline.data_specs.schema import EvaluationSpec
    from multilora_pipeline.models.prompt_format import PromptFormat

TASK_PREFIX = "mlora_"
# gsm8k.yaml's exact_match `regexes_to_ignore`: the pipeline's gsm8k_normalise.
GSM8K_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]
# The generic generation normalisation (suites.normalise_answer) as exact_match settings.
GENERIC_IGNORE = [",", "\\$", "\\.+$"]


@dataclass(frozen=True)
class WrittenTask:
    """One lm-eval task written for a suite."""

    suite: str
    task: str
    yaml_path: Path
    data_path: Path
    items: int
    metrics: tuple[str, ...]
    """The lm-eval metric names, each equal to the pipeline's `<suite>_<metric>`."""


# What the written tasks ask of lm-eval's hf model: the bos is in the text already, and fp32
# is what the pipeline scores in on a CPU.
MODEL_ARGS = {"add_bos_token": False, "dtype": "float32"}


def model_args(base: str, peft: str, revision: str | None = None) -> dict:
    """lm-eval's `--model_args` for a version's PEFT export on its base."""
    return {
        "pretrained": base,
        **({"revision": revision} if revision else {}),
        "peft": peft,
        **MODEL_ARGS,
    }


def run_lm_eval(base: str, peft: str, task_dir: str | Path, tasks: list[str], **kwargs) -> dict:
    """lm_eval (the installed harness, a dev dependency) on written tasks: its results dict."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args(base, peft, kwargs.pop("revision", None)),
        tasks=tasks,
        task_manager=TaskManager(include_path=str(task_dir)),
        batch_size=1,
        device="cpu",
        **kwargs,
    )


def task_name(suite: str) -> str:
    return TASK_PREFIX + suite


def lm_eval_context(fmt: PromptFormat, rendered: str) -> str:
    """A context rendered in the run's prompt format as lm-eval must see it: with the bos
    token as text where the pipeline prefixes bos."""
    bos = fmt.tokenizer.bos_token if fmt.prefix(rendered) else ""
    return bos + rendered


def _check_tokens(fmt: PromptFormat, suite: str, i: int, text: str, rendered: str) -> None:
    """lm-eval's context ids (the text with no special tokens added, trailing whitespace
    moved out) must be the pipeline's, or its numbers would be of other inputs."""
    ours = (
        fmt.prefix(rendered)
        + fmt.tokenizer(rendered.rstrip(), add_special_tokens=False)["input_ids"]
    )
    theirs = fmt.tokenizer(text.rstrip(), add_special_tokens=False)["input_ids"]
    if ours != theirs:
        raise DataError(
            "lm-eval would tokenise this item differently from the pipeline "
            f"({len(theirs)} tokens against {len(ours)}): its score would not be comparable",
            where=f"suite {suite!r}: item {i}",
            fix="this tokenizer changes text next to its bos token; score with the pipeline, "
            "or run lm_eval with add_bos_token=True on contexts without the bos text",
        )


def _task_config(fmt: SuiteFormat, name: str, data_path: Path, settings: EvaluationSpec) -> dict:
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_path)}},
        "test_split": "test",
        "doc_to_text": "context",
        "num_fewshot": 0,  # the exemplars are in the context already
        "target_delimiter": fmt.target_delimiter,
        "metadata": {"version": 1.0, "lm_eval_version": LM_EVAL_VERSION},
    }
    if fmt.kind == "multiple_choice":
        metric = {"aggregation": "mean", "higher_is_better": True}
        return {
            **config,
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc", **metric}, {"metric": "acc_norm", **metric}],
        }
    generation = {
        **config,
        "output_type": "generate_until",
        "doc_to_target": "response",
        "generation_kwargs": {
            "until": list(fmt.stop_sequences),
            "do_sample": False,
            "temperature": 0.0,
            "max_gen_toks": settings.max_new_tokens,
        },
    }
    if fmt.answer_extraction == "gsm8k":
        exact = {
            "ignore_case": True,
            "ignore_punctuation": False,
            "regexes_to_ignore": GSM8K_IGNORE,
        }
        filters = [
            ("strict-match", "#### (\\-?[0-9\\.\\,]+)", 0),
            ("flexible-extract", "(-?[$0-9.,]{2,})|(-?[0-9]+)", -1),
        ]
    else:
        exact = {"ignore_case": True, "regexes_to_ignore": GENERIC_IGNORE}
        filters = [("stripped", "(?s)^\\s*(.*?)\\s*$", 0)]
    return {
        **generation,
        "metric_list": [
            {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, **exact}
        ],
        "filter_list": [
            {
                "name": filter_name,
                "filter": [
                    {"function": "regex", "regex_pattern": pattern, "group_select": group},
                    {"function": "take_first"},
                ],
            }
            for filter_name, pattern, group in filters
        ],
    }


def write_lm_eval_tasks(
    suites: list[SuiteData], settings: EvaluationSpec, fmt: PromptFormat, out_dir: str | Path
) -> list[WrittenTask]:
    """One task YAML and data file per suite in `out_dir`."""
    out_dir = Path(out_dir).resolve()
    staged = []
    for suite in suites:
        items = suite_items(suite, settings)
        name = task_name(suite.spec.name)
        rows = []
        rendered = fmt.render(items.contexts)  # once per suite, as the scorer renders them
        for i, (row, context) in enumerate(zip(items.rows, rendered, strict=True)):
            text = lm_eval_context(fmt, context)
            _check_tokens(fmt, suite.spec.name, i, text, context)
            record = {"context": text, "item": i}
            if items.fmt.kind == "multiple_choice":
                record.update(choices=list(row["choices"]), label=int(row["label"]))
            else:
                record["response"] = row["response"]
            rows.append(record)
        metrics = ("acc", "acc_norm") if items.fmt.kind == "multiple_choice" else ("exact_match",)
        staged.append((suite.spec.name, name, items.fmt, rows, metrics))
    # Every suite is read and checked before the first file is written: a bad item leaves
    # nothing behind; each file is replaced whole (other files in `out_dir` are left alone).
    written = []
    for suite, name, suite_fmt, rows, metrics in staged:
        data_path = out_dir / f"{name}.jsonl"
        write_text_atomic(
            data_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        )
        config = _task_config(suite_fmt, name, data_path, settings)
        yaml_path = write_text_atomic(
            out_dir / f"{name}.yaml", yaml.safe_dump(config, sort_keys=False)
        )
        written.append(WrittenTask(suite, name, yaml_path, data_path, len(rows), metrics))
    return written
