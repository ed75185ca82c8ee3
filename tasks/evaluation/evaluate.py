"""Evaluate a model on its eval suites and held-out rows: the metrics the pipeline logs.

`evaluate_model` reads each suite's normalised Parquet, builds few-shot
contexts (`build_contexts`, lm-eval's deterministic exemplars), scores
multiple-choice suites by log-likelihood (tasks/evaluation/scoring.py: acc and
acc_norm as lm-evaluation-harness computes them) and generation suites by
greedy decoding and answer extraction (tasks/evaluation/generate.py; GSM8K scored as
lm-eval's strict-match and flexible-extract),
then assembles flat MLflow metrics (per suite, per category, the macro mean)
and one prediction row per item. `compare_arms` turns the metrics of several
arms into the parent run's comparison table.

Every prompt is encoded in the run's prompt format (models/prompt_format.py), the one
training used: held-out loss uses the training tokenisation itself (tasks/training/tokenise.py:
prefix + prompt + response + eos, loss on response + eos), so it is the same quantity as
the training loop's validation loss, and the scorers encode their contexts the same way.

The model must already be on `device`; it is put in eval mode for the call
and given back in the mode it came in.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from multilora_pipeline.data_specs import metrics as names
from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.models.prompt_format import PromptFormat
from multilora_pipeline.tasks.evaluation.baselines import suite_baselines
from multilora_pipeline.tasks.evaluation.generate import generate_greedy
from multilora_pipeline.tasks.evaluation.scoring import (
    CausalLM,
    choice_metrics,
    eval_mode,
    right_pad,
    score_choices,
    token_logprobs,
)
from multilora_pipeline.tasks.evaluation.suites import (
    SuiteFormat,
    extract_answer,
    gold_answer,
    suite_format,
)
from multilora_pipeline.tasks.training.tokenise import IGNORE, tokenise_records

if TYPE_CHECKING:  # evaluation needs no pydantic at run time (GPU boxes, lm-eval-style use)
    from multilora_pipeline.data_specs.schema import EvalSuiteSpec, EvaluationSpec


class SuiteData(NamedTuple):
    """One suite to score: its spec, its normalised Parquet, and an optional dev split for shots."""

    spec: EvalSuiteSpec
    path: Path
    dev_path: Path | None = None


@dataclass
class EvalResult:
    """Flat metrics (MLflow keys) and one prediction row per scored item."""

    metrics: dict[str, float]
    predictions: pd.DataFrame


# --- held-out loss ----------------------------------------------------------------------


def heldout_loss(
    model,
    fmt: PromptFormat,
    table: pa.Table,
    *,
    batch_size: int = 16,
    device=None,
    max_length: int | None = None,
) -> dict[str, tuple[float, int]]:
    """Summed response-token NLL and token count per source: {source: (nll_sum, tokens)}.

    Tokenisation is the training one (tasks/training/tokenise.py), so the mean is the
    same quantity the training loop reports as validation loss.
    """
    lm = CausalLM(model, fmt, device)
    max_length = max_length or lm.max_length or 2048  # 2048: a safe default for unknown configs
    totals: dict[str, tuple[float, int]] = {}
    sources = table.column("source").to_pylist()
    with eval_mode(model):
        for source in sorted(set(sources)):
            rows = [i for i, s in enumerate(sources) if s == source]
            examples, _ = tokenise_records(
                table.take(rows), fmt, max_length=max_length, loss_on_prompt=False
            )
            examples.sort(key=lambda e: -len(e.input_ids))
            nll, count = 0.0, 0
            start = 0
            while start < len(examples):
                # Only response positions get logits, but a batch of all-response rows would
                # need rows x length x vocab floats (16 x 160 x 49k: 0.5 GB, and as much again
                # for the log-softmax), so a batch still runs in as many rows as fit the budget.
                rows_now = min(batch_size, lm.rows_within_budget(len(examples[start].input_ids)))
                chunk = examples[start : start + rows_now]
                start += rows_now
                ids, mask = right_pad([e.input_ids for e in chunk], lm.pad_id)
                labels, _ = right_pad([e.labels for e in chunk], IGNORE)
                logits, targets = lm.response_logits(ids, mask, labels, ignore_index=IGNORE)
                nll -= float(token_logprobs(logits, targets).sum())
                count += targets.numel()
            totals[source] = (nll, count)
    return totals


# --- suites -----------------------------------------------------------------------------


def _read_rows(path: Path, what: str) -> list[dict]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(
            f"cannot read {what} Parquet: {err}",
            where=str(path),
            fix="re-run the normalise stage that writes it",
        ) from None
    missing = {"prompt", "response", "choices", "label"} - set(table.column_names)
    if missing:
        raise DataError(
            f"{what} is missing columns {sorted(missing)}",
            where=str(path),
            fix="evaluation files must have the canonical record schema (data_specs/record.py)",
        )
    return table.to_pylist()


def _check_row(row: dict, i: int, path: Path, fmt: SuiteFormat) -> None:
    where = f"{path}: row {i}"
    if not isinstance(row.get("prompt"), str):
        raise DataError("prompt is missing", where=f"{where}, field prompt")
    if fmt.kind == "multiple_choice":
        choices = row.get("choices")
        if not choices or len(choices) < 2:
            raise DataError(
                "a multiple-choice item needs at least two choices",
                where=f"{where}, field choices",
                fix="normalise this suite with a template that keeps choices",
            )
        label = row.get("label")
        if label is None or not 0 <= label < len(choices):
            raise DataError(
                f"label {label!r} is not an index into {len(choices)} choices",
                where=f"{where}, field label",
                fix="the gold label must be the 0-based index of the right choice",
            )
    elif not (row.get("response") or "").strip():
        raise DataError(
            "a generation item needs the gold answer in response", where=f"{where}, field response"
        )


def _shot_text(row: dict, fmt: SuiteFormat) -> str:
    target = row["choices"][row["label"]] if fmt.kind == "multiple_choice" else row["response"]
    return row["prompt"] + fmt.target_delimiter + target


def _description(row: dict, fmt: SuiteFormat) -> str:
    if not fmt.description:
        return ""
    try:
        meta = json.loads(row.get("meta") or "{}")
        return fmt.description.format(**{k: str(v).replace("_", " ") for k, v in meta.items()})
    except (KeyError, ValueError, TypeError, IndexError):
        return ""  # the row does not carry the header's fields: no header, as lm-eval without one


def build_headers(rows: list[dict], fmt: SuiteFormat) -> list[str]:
    """Each item's header (the suite format's description with the row's fields, "" for
    none): lm-eval's task description, which the prompt format puts in front of the
    context, or in the system turn of a chat (models/prompt_format.py)."""
    return [_description(row, fmt) for row in rows]


def build_contexts(
    rows: list[dict], fmt: SuiteFormat, k: int, dev_rows: list[dict] | None = None
) -> list[str]:
    """Each item's prompt as the user gives it: k exemplars, then the item's own prompt (the
    header is apart: `build_headers`).

    Exemplars are deterministic: the first k rows of the dev split when given
    (lm-eval's `first_n` sampler, as MMLU uses), else the suite's first k + 1
    rows without the item itself.
    """
    contexts = []
    for i, row in enumerate(rows):
        if k == 0:
            shots = []
        elif dev_rows:
            shots = dev_rows[:k]
        else:
            shots = [r for j, r in enumerate(rows[: k + 1]) if j != i][:k]
        body = "".join(_shot_text(s, fmt) + fmt.fewshot_delimiter for s in shots)
        contexts.append(body + row["prompt"])
    return contexts


class SuiteItems(NamedTuple):
    """The items of a suite as scored: its format, its rows and each row's full context."""

    fmt: SuiteFormat
    rows: list[dict]
    contexts: list[str]
    """Few-shot exemplars + the row's prompt, before the prompt format renders it."""
    headers: list[str]
    """Each row's header ("" for none): the prompt format's `systems`."""


def suite_items(suite: SuiteData, settings: EvaluationSpec) -> SuiteItems:
    """The suite's checked rows (its first `max_items`) and their contexts: what the scorer
    scores, and what `mlora lm-eval-tasks` writes for lm-eval to score."""
    spec, fmt = suite.spec, suite_format(suite.spec)
    all_rows = _read_rows(Path(suite.path), f"suite {spec.name!r}")
    for i, row in enumerate(all_rows):
        _check_row(row, i, Path(suite.path), fmt)
    dev_rows = None
    if suite.dev_path is not None:
        dev_rows = _read_rows(Path(suite.dev_path), f"dev split of suite {spec.name!r}")
        for i, row in enumerate(dev_rows):
            _check_row(row, i, Path(suite.dev_path), fmt)
    contexts = build_contexts(all_rows, fmt, settings.few_shot, dev_rows)
    rows = all_rows[: spec.max_items] if spec.max_items else all_rows
    contexts = contexts[: len(rows)]
    if not rows:
        raise DataError(f"suite {spec.name!r} has no items", where=str(suite.path))
    return SuiteItems(fmt, rows, contexts, build_headers(rows, fmt))


def _score_suite(
    model, prompts: PromptFormat, suite: SuiteData, settings: EvaluationSpec, device
) -> tuple[dict[str, float], pd.DataFrame]:
    spec = suite.spec
    fmt, rows, contexts, headers = suite_items(suite, settings)
    records = []
    if fmt.kind == "multiple_choice":
        lls = score_choices(
            model,
            prompts,
            contexts,
            [r["choices"] for r in rows],
            delimiter=fmt.target_delimiter,
            systems=headers,
            batch_size=settings.batch_size,
            device=device,
            progress=True,
            desc=f"score {spec.name}",
        )
        for row, ll in zip(rows, lls, strict=True):
            m = choice_metrics(ll, row["choices"], row["label"])
            records.append(
                _prediction(
                    spec,
                    row,
                    row["choices"][row["label"]],
                    row["choices"][m["pred"]],
                    m["acc"],
                    ll,
                    "",
                    row["choices"][m["pred_norm"]],
                    m["acc_norm"],
                )
            )
        metrics = {
            names.suite_metric(spec.name, "acc"): float(np.mean([r["correct"] for r in records])),
            names.suite_metric(spec.name, "acc_norm"): float(
                np.mean([r["correct_norm"] for r in records])
            ),
        }
        metrics.update(suite_baselines(spec.name, rows, records))
    else:
        outputs = generate_greedy(
            model,
            prompts,
            contexts,
            systems=headers,
            max_new_tokens=settings.max_new_tokens,
            stop_sequences=fmt.stop_sequences,
            batch_size=settings.batch_size,
            device=device,
            progress=True,
            desc=f"generate {spec.name}",
        )
        for i, (row, out) in enumerate(zip(rows, outputs, strict=True)):
            gold = gold_answer(row["response"], fmt.answer_extraction)
            if not gold:
                raise DataError(
                    "no gold answer found in the response",
                    where=f"{suite.path}: row {i}, field response",
                    fix="GSM8K-style answers end with '#### <number>'",
                )
            pred = extract_answer(out, fmt.answer_extraction)
            record = _prediction(spec, row, gold, pred, float(pred == gold), None, out)
            if fmt.answer_extraction == "gsm8k":  # lm-eval's second reading: the last number
                loose = extract_answer(out, "gsm8k_flexible")
                record.update(predicted_flexible=loose, correct_flexible=loose == gold)
            records.append(record)
        metrics = {
            names.suite_metric(spec.name, "exact_match"): float(
                np.mean([r["correct"] for r in records])
            )
        }
        if fmt.answer_extraction == "gsm8k":
            metrics.update(_gsm8k_metrics(spec.name, records))
    return metrics, pd.DataFrame.from_records(records)


def _gsm8k_metrics(suite: str, records: list[dict]) -> dict[str, float]:
    """lm-eval's two gsm8k scores of the same outputs: strict-match (only the `#### N`
    answer; the same number as `<suite>_exact_match`, the headline) and flexible-extract
    (the last number anywhere, so a model that skips the `####` format still shows its
    arithmetic; it also reads a stray digit in garbage as an answer, hence not the headline).
    The names are data_specs/metrics.py's GSM8K, which registry.primary_metric accepts."""
    strict, flexible = names.GSM8K
    return {
        names.suite_metric(suite, strict): float(np.mean([r["correct"] for r in records])),
        names.suite_metric(suite, flexible): float(
            np.mean([r["correct_flexible"] for r in records])
        ),
    }


def _prediction(
    spec, row, gold, predicted, correct, loglik, output, pred_norm=None, correct_norm=None
):
    return {
        "suite": spec.name,
        "category": spec.category,
        "item_id": row.get("id") or "",
        "prompt": row["prompt"],
        "gold": gold,
        "predicted": predicted,
        "correct": bool(correct),
        "predicted_norm": predicted if pred_norm is None else pred_norm,
        "correct_norm": bool(correct if correct_norm is None else correct_norm),
        # GSM8K's flexible-extract reading (the last number); other suites have one reading.
        "predicted_flexible": predicted,
        "correct_flexible": bool(correct),
        # JSON text, not a list: MLflow tables and Parquet both take it as is.
        "choice_loglik": json.dumps([round(x, 6) for x in loglik]) if loglik is not None else "",
        "output": output,
    }


def evaluate_model(
    model,
    fmt: PromptFormat,
    suites: list[SuiteData],
    validation_path: Path | None,
    settings: EvaluationSpec,
    device=None,
    *,
    max_length: int | None = None,
) -> EvalResult:
    """Score a model on every suite and on held-out rows; flat metrics plus a prediction table.

    Metrics: `<suite>_acc` and `<suite>_acc_norm` (multiple choice),
    `<suite>_exact_match` (generation; for GSM8K the `#### N` answer only, as lm-eval's
    strict-match, logged again as `<suite>_strict_match`, with the last-number reading
    as `<suite>_flexible_extract`), `category_<category>_score` (mean headline
    score of the category's suites), `eval_macro_acc` (mean headline score over
    suites), and from `validation_path`: `val_loss`, `val_ppl` (token-weighted over
    all sources) and `val_loss_<source>`. `fmt` is the run's prompt format and
    `max_length` the training one, so the validation loss is the training one.
    """
    metrics: dict[str, float] = {}
    frames = []
    by_category: dict[str, list[float]] = defaultdict(list)
    headline = []
    for suite in suites:
        suite_metrics, frame = _score_suite(model, fmt, suite, settings, device)
        metrics.update(suite_metrics)
        frames.append(frame)
        score = suite_metrics[
            names.suite_metric(suite.spec.name, names.headline_kind(suite.spec.kind))
        ]
        by_category[suite.spec.category].append(score)
        headline.append(score)
    for category, scores in sorted(by_category.items()):
        metrics[names.category_metric(category)] = float(np.mean(scores))
    if headline:
        metrics[names.MACRO] = float(np.mean(headline))

    if validation_path is not None:
        table = pq.read_table(validation_path)
        if "source" not in table.column_names or table.num_rows == 0:
            raise DataError(
                "validation rows need a source column and at least one row",
                where=str(validation_path),
                fix="re-run the mix stage",
            )
        totals = heldout_loss(
            model,
            fmt,
            table,
            batch_size=settings.batch_size,
            device=device,
            max_length=max_length,
        )
        for source, (nll, count) in totals.items():
            if count:
                metrics[f"{names.HELD_OUT_LOSS}_{source}"] = nll / count
        nll = sum(v[0] for v in totals.values())
        count = sum(v[1] for v in totals.values())
        if count:
            metrics[names.HELD_OUT_LOSS] = nll / count
            metrics[names.HELD_OUT_PPL] = math.exp(min(nll / count, 50.0))  # 50: keep exp() finite
    predictions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return EvalResult(metrics=metrics, predictions=predictions)


def compare_arms(metrics_by_arm: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per arm (the base model included, if given), one column per metric:
    the parent run's comparison table. Headline columns first, then the rest by name."""
    first = [names.MACRO, names.HELD_OUT_LOSS, names.HELD_OUT_PPL]
    logged = sorted({k for m in metrics_by_arm.values() for k in m})
    columns = [c for c in first if c in logged] + [c for c in logged if c not in first]
    table = pd.DataFrame(
        [[metrics.get(c, float("nan")) for c in columns] for metrics in metrics_by_arm.values()],
        columns=columns,
    )
    table.insert(0, "arm", list(metrics_by_arm))
    return table
