"""The mixture as Trainer's dataset: Parquet records tokenised and packed (or padded) into
blocks of `training.max_length` tokens, one dict of token-id lists per block (Trainer's
default collator stacks them)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import pyarrow.parquet as pq

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.data_specs.schema import TrainingSpec
from multilora_pipeline.models.prompt_format import PromptFormat
from multilora_pipeline.tasks.training.tokenise import pack_examples, pad_examples, tokenise_records

log = logging.getLogger("mlora.train")


def read_records(path: str | Path):
    """A Parquet file or a folder of shards, in file-name order (the mixture's training order)."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    return pq.ParquetDataset(files).read() if files else None


def build_dataset(path, fmt: PromptFormat, training: TrainingSpec) -> tuple[list[dict], dict]:
    """The blocks of the records at `path` and the tokenising statistics."""
    table = read_records(path)
    if table is None or table.num_rows == 0:
        raise TrainingError(
            "no rows to train on",
            where=str(path),
            fix="check the mixture: every source may have been filtered out",
        )
    examples, stats = tokenise_records(
        table, fmt, max_length=training.max_length, loss_on_prompt=training.loss_on_prompt
    )
    if stats.dropped_no_target:
        lost = (
            f"{stats.dropped_no_target} of {table.num_rows} examples lost their whole response: "
            f"their prompt fills training.max_length ({training.max_length} tokens)"
        )
        if not examples:
            raise TrainingError(
                f"nothing to train on: {lost}, the shortest prompt has {stats.shortest_prompt}",
                where=str(path),
                fix=f"raise training.max_length above {stats.shortest_prompt} (and enough for "
                "the responses), or shorten the prompts",
            )
        log.warning("%s (%s); they are left out", lost, path)
    pad_id = fmt.tokenizer.pad_token_id
    rows = (pack_examples if training.pack else pad_examples)(examples, training.max_length, pad_id)
    return rows, {**asdict(stats), "sequences": len(rows)}
