"""Every identity the pipeline reuses work by: what each key is made of, the code version it
carries, how a rerun finds the output again and how the output is written.

Every key but the record id (blake2b of a row) and run_key (a join of keys) is
`content_key` (models/content.py) of what decides the output, so the same
inputs find the same output and changed inputs never find a stale one. A key carries a
code version where the code that makes the output can change what it writes for the
same inputs; bump that constant with such a change and old outputs are rebuilt, not
reused.

    key             made of                                          code version
    --------------  -----------------------------------------------  ------------------
    spec_hash       the spec's canonical form (a property of the     (the spec itself)
                    spec, data_specs/schema/spec.py: below tasks/)
    record id       one row's normalised content (data_specs/        (the content)
                    record.py)
    snapshot_key    where the bytes come from, their sha256 (or hub  SNAPSHOT_VERSION
                    revision or fingerprint), the read options
    stage_id        stage, input ids, parameters                     STAGE_CODE_VERSION
    mixture_id      each source's rows hash (its row ids in order),  STAGE_CODE_VERSION
                    mixture parameters, seed
    tiny_model_key  the tiny model's config, the mixture its         (its config)
                    tokenizer is trained on, seed
    base_eval_key   everything that decides the base model's scores  EVAL_CODE_VERSION
                    (tasks/evaluation/cache.py: base_eval_inputs)
    training_hash   base model, arm, one run's training settings     TRAINING_CODE_VERSION
                    (its seed), spec seed, prompt format
    run_key         training_hash, mixture id, arm name              TRAINING_CODE_VERSION

    key             found again by                                   written
    --------------  -----------------------------------------------  ------------------
    spec_hash       the catalog's `sources` row                      catalog row
    record id       is the row's `id` column                         with the row
    snapshot_key    raw/<key>.parquet and the catalog's `snapshots`  atomic file rename
    stage_id        the catalog's `stage_outputs` row, files there   atomic_folder
    mixture_id      as stage_id (stage "mixture")                    atomic_folder
    tiny_model_key  models/tiny-<key>/ exists                        atomic_folder
    base_eval_key   base_eval/<key>/evaluation.json exists           atomic file
    run_key         result.json in the arm folder and a FINISHED     in place, under the
                    MLflow run tagged with the run key; the version  spec lock; result.json
                    tagged with it                                   (atomic) marks it done

One write policy for content-keyed folders (`atomic_folder`): a folder appears whole under
its final name, and a folder already there holds the same content and is kept, so a run
of another spec sharing the data never deletes or replaces a folder a running pipeline
reads. Arm folders are the exception the table shows: a run resumes from its checkpoints,
so it writes in place, and the spec lock (flows/pipeline.py: `spec_lock`) keeps one writer
per folder (the folder is under the spec's name).

Not reuse keys, and versioned where they are defined: the catalog's SCHEMA_VERSION
(tasks/catalog.py: migrations of an older catalog), the adapter file FORMAT_VERSION
(models/multilora/config.py), LM_EVAL_VERSION (tasks/evaluation/suites.py: the lm-eval the
scoring matches), and the Prefect tags of a spec's flow runs and of a training flow run
(flows/stale_runs.py, flows/training_pool.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from multilora_pipeline.models.content import content_key
from multilora_pipeline.models.prompt_format import run_identity

if TYPE_CHECKING:
    from multilora_pipeline.data_specs.schema import MixtureSpec, PipelineSpec, TinyModelSpec
    from multilora_pipeline.tasks.training.arm_runs import ArmRun

SNAPSHOT_VERSION = 2
"""Bump when the snapshot layout or its key changes: old snapshots are then fetched again.
2: keys through content_key (compact JSON), 2026-12-07: every source is fetched once again."""

STAGE_CODE_VERSION = 3
"""Bump when a data stage's code (the mixture's too) changes what it writes for the same
inputs: old outputs are rebuilt. 2: meta['query'] for passage tasks, duplicate_row in dedup
drops; 3: decontamination judged on content (seams, template spans, the item's question),
the file of every row in drops."""

EVAL_CODE_VERSION = 5
"""Bump when scoring code changes the numbers it gives for the same inputs: every cached
base evaluation is scored again, and reused arms are scored again (their runs' eval id tag
differs). 2: GSM8K exact_match reads only `#### N` (lm-eval strict-match); 3: every scorer
encodes prompts in the run's prompt format, as training does; 4: lm-eval 0.4.13 exactly
(per-(context, choice) truncation, gsm8k's filters, stops and normalisation); 5: a chat
format scores a choice as the assistant turn's first text and moves the generation
prompt's newline into it (lm-eval --apply_chat_template); a suite header is the system
turn; majority, chance and balanced accuracy beside acc."""

TRAINING_CODE_VERSION = 1
"""Bump when training code changes the weights it trains for the same inputs (the loss,
the MultiLoRA initialisation, the data order): every arm is trained again, and registered
as a new version."""


def snapshot_key(*parts) -> str:
    """A fetched snapshot's content hash (full length: it names raw/<key>.parquet and the
    catalog compares it): SNAPSHOT_VERSION, where the bytes come from and the read options."""
    return content_key([SNAPSHOT_VERSION, *parts], length=64)


def stage_id(stage: str, input_ids: list[str], params: dict) -> str:
    """A data stage output's id: the stage, its input ids, its parameters, the code version."""
    return content_key(
        {"stage": stage, "inputs": input_ids, "params": params, "code": STAGE_CODE_VERSION}
    )


def mixture_id(input_hashes: dict[str, str], config: MixtureSpec, seed: int) -> str:
    """A mixture's id: each source's rows hash, the mixture parameters, the seed, the code."""
    return content_key(
        {
            "inputs": input_hashes,
            "mixture": config.model_dump(mode="json"),
            "seed": seed,
            "code": STAGE_CODE_VERSION,
        }
    )


def tiny_model_key(tiny: TinyModelSpec, mixture_id: str, seed: int) -> str:
    """The tiny random model's folder key: its config, the mixture its tokenizer is trained
    on, the seed of its random weights."""
    return content_key([tiny.model_dump(mode="json"), mixture_id, seed])


def base_eval_key(inputs: dict) -> str:
    """The base evaluation's cache id: `inputs` from tasks/evaluation/cache.py's
    base_eval_inputs, which holds EVAL_CODE_VERSION."""
    return content_key(inputs)


def training_hash(spec: PipelineSpec, run: ArmRun) -> str:
    """What decides a run's weights: base model, the arm, this run's training settings (its
    seed among them), the spec's seed, the prompt format and the training code.

    Editing a spec's description, evaluation or promotion settings changes its spec
    hash but not this: the trained arms, their runs and versions are reused. So does
    adding seeds or a grid: the runs it already has are found again.
    """
    return content_key(
        [
            spec.base_model.model_dump(mode="json"),
            run.arm.identity(),
            run.training.identity(),
            spec.seed,
            run_identity(spec.prompt_format),  # the tokens the arm is trained on
            TRAINING_CODE_VERSION,
        ]
    )


def run_key(spec: PipelineSpec, mixture_id: str, run: ArmRun) -> str:
    """Identity of a training run: same training, same mixture -> same run and version."""
    return f"{training_hash(spec, run)}:{mixture_id}:{run.arm.name}"
