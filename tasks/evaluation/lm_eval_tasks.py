"""lm-evaluation-harness tasks that score exactly what the pipeline scores.

`write_lm_eval_tasks` writes, per suite, a data file (`<task>.jsonl`) and a task YAML
(`<task>.yaml`) for lm-eval (LM_EVAL_VERSION), so a user can run the real harness on
any registered version and compare its numbers with the pipeline's. The flags depend on
the run's prompt format (`lm_eval_flags`):

    chat:   lm_eval --model hf --apply_chat_template --include_path DIR --tasks mlora_boolq,... \
                --model_args pretrained=BASE,peft=VERSION/artifacts/peft,dtype=float32
    plain:  lm_eval --model hf --include_path DIR --tasks mlora_boolq,... \
                --model_args pretrained=BASE,peft=VERSION/artifacts/peft,add_bos_token=False,dtype=float32

Under `chat` the harness renders the chat itself, with its standard flag: each row holds
the user turn as the pipeline builds it (few-shot exemplars and the prompt, one turn, as
lm-eval collapses exemplars without --fewshot_as_multiturn) and the suite's header as the
task `description` (lm-eval's system turn); the choices are plain ("yes", "A") and the
harness drops the target delimiter before them, as the pipeline's chat format does. The
pipeline's scores are then lm-eval's item for item: the rendering, the continuation with
the generation prompt's newline moved into it, acc and acc_norm.

Under `plain` each row holds the item's context already rendered, with the bos token as
text (lm-eval, given a string that opens with bos and `add_bos_token=False`, tokenises
it with no special tokens added). `write_lm_eval_tasks` checks, item by item, that the
harness's context token ids are the pipeline's, in both formats. Generation suites use
lm-eval's gsm8k filters and exact_match settings (strict-match and flexible-extract);
generic ones its regex filter and exact_match with the pipeline's normalisation.
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


# What the written tasks ask of lm-eval's hf model: fp32, what the pipeline scores in on a
# CPU; in plain text the bos is in the text already, so none is added.
MODEL_ARGS = {"dtype": "float32"}
PLAIN_MODEL_ARGS = {"add_bos_token": False, **MODEL_ARGS}


def model_args(
    base: str, peft: str | None, revision: str | None = None, chat: bool = False
) -> dict:
    """lm-eval's `--model_args` for a version's PEFT export on its base (the base alone
    without `peft`)."""
    return {
        "pretrained": base,
        **({"revision": revision} if revision else {}),
        **({"peft": peft} if peft else {}),
        **(MODEL_ARGS if chat else PLAIN_MODEL_ARGS),
    }


def lm_eval_flags(chat: bool) -> list[str]:
    """The command-line flags besides --model_args that reproduce the pipeline's numbers."""
    return ["--apply_chat_template"] if chat else []


def run_lm_eval(
    base: str, peft: str | None, task_dir: str | Path, tasks: list[str], *, chat: bool, **kwargs
) -> dict:
    """lm_eval (the installed harness, a dev dependency) on written tasks, with the flags of
    `lm_eval_flags`: its results dict (per-item samples with `log_samples=True`)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args(base, peft, kwargs.pop("revision", None), chat),
        tasks=tasks,
        task_manager=TaskManager(include_path=str(task_dir)),
        batch_size=1,
        device="cpu",
        apply_chat_template=chat,
        **kwargs,
    )


def task_name(suite: str) -> str:
    return TASK_PREFIX + suite


def lm_eval_context(fmt: PromptFormat, rendered: str) -> str:
    """A context rendered in plain text as lm-eval must see it: with the bos token as text
    where the pipeline prefixes bos."""
    bos = fmt.tokenizer.bos_token if fmt.prefix(rendered) else ""
    return bos + rendered


def harness_ids(fmt: PromptFormat, rendered: str) -> list[int]:
    """The context ids lm-eval's hf model feeds for an item the pipeline renders as
    `rendered` (trailing whitespace moved out, as it moves it): in a chat its own rendering,
    encoded with no special tokens when it opens with the bos text and with the tokenizer's
    default ones otherwise; in plain text the written context with add_bos_token=False."""
    tokenizer = fmt.tokenizer
    if fmt.kind == "chat":
        bos = tokenizer.bos_token
        default = not (bos and rendered.startswith(bos))
        return tokenizer(rendered.rstrip(), add_special_tokens=default)["input_ids"]
    text = lm_eval_context(fmt, rendered)
    return tokenizer(text.rstrip(), add_special_tokens=False)["input_ids"]


def _check_tokens(fmt: PromptFormat, suite: str, i: int, rendered: str) -> None:
    """lm-eval's context ids must be the pipeline's, or its numbers would be of other inputs."""
    ours = (
        fmt.prefix(rendered)
        + fmt.tokenizer(rendered.rstrip(), add_special_tokens=False)["input_ids"]
    )
    theirs = harness_ids(fmt, rendered)
    if ours != theirs:
        raise DataError(
            "lm-eval would tokenise this item differently from the pipeline "
            f"({len(theirs)} tokens against {len(ours)}): its score would not be comparable",
            where=f"suite {suite!r}: item {i}",
            fix="this tokenizer adds or changes text next to its bos token; score with the "
            "pipeline, or compare with prompt_format: plain",
        )


def _task_config(
    fmt: SuiteFormat, name: str, data_path: Path, settings: EvaluationSpec, headers: bool
) -> dict:
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_path)}},
        "test_split": "test",
        "doc_to_text": "context",
        # The header of a chat row: lm-eval makes it the system turn.
        **({"description": "{{description}}"} if headers else {}),
        "num_fewshot": 0,  # the exemplars are in the context already
        # Under --apply_chat_template lm-eval leaves it out, as the chat format does.
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
    chat = fmt.kind == "chat"
    staged = []
    for suite in suites:
        items = suite_items(suite, settings)
        name = task_name(suite.spec.name)
        rows = []
        # Once per suite, as the scorer renders them.
        rendered = fmt.render(items.contexts, items.headers)
        for i, (row, context) in enumerate(zip(items.rows, rendered, strict=True)):
            _check_tokens(fmt, suite.spec.name, i, context)
            if chat:  # the harness renders the chat: the user turn and the header, as text
                record = {"context": items.contexts[i], "description": items.headers[i]}
            else:
                record = {"context": lm_eval_context(fmt, context)}
            record["item"] = i
            if items.fmt.kind == "multiple_choice":
                record.update(choices=list(row["choices"]), label=int(row["label"]))
            else:
                record["response"] = row["response"]
            rows.append(record)
        metrics = ("acc", "acc_norm") if items.fmt.kind == "multiple_choice" else ("exact_match",)
        headers = chat and any(items.headers)
        staged.append((suite.spec.name, name, items.fmt, rows, metrics, headers))
    # Every suite is read and checked before the first file is written: a bad item leaves
    # nothing behind; each file is replaced whole (other files in `out_dir` are left alone).
    written = []
    for suite, name, suite_fmt, rows, metrics, headers in staged:
        data_path = out_dir / f"{name}.jsonl"
        write_text_atomic(
            data_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        )
        config = _task_config(suite_fmt, name, data_path, settings, headers)
        yaml_path = write_text_atomic(
            out_dir / f"{name}.yaml", yaml.safe_dump(config, sort_keys=False)
        )
        written.append(WrittenTask(suite, name, yaml_path, data_path, len(rows), metrics))
    return written
