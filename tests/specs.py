"""The tests' specs, from a few parts: the tiny demo or the smallest pipeline as a dict to
edit, a one-source spec around the bad-input corpus, and `write_spec` to put one on disk.

A test edits the dict it gets (each call builds a new one) and writes or parses it itself,
so what it changes stays in the test.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from multilora_pipeline.data_specs.schema import PipelineSpec, demo_spec_path, parse_spec

REPO = Path(__file__).resolve().parents[1]
DEMO = demo_spec_path(tiny=True)
DEMO_DATA = REPO / "data_specs" / "demo"
BAD_INPUTS = REPO / "tests" / "data_specs" / "bad_inputs"
GOOD_SUITE = {
    "name": "good",
    "path": "good.jsonl",
    "template": "gsm8k",
    "kind": "generation",
    "category": "math",
}
"""The one-item suite tests/data_specs/bad_inputs ships (a path relative to that folder)."""


def write_spec(spec: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def reduced_demo(**sections) -> dict:
    """The tiny demo spec, shrunk to run in seconds: fewer rows, a smaller model, fewer
    steps; its data paths absolute. `sections` replace the spec's top-level keys whole."""
    spec = yaml.safe_load(DEMO.read_text())
    for source in spec["sources"]:
        source["path"] = str(DEMO.parent / source["path"])
        source["max_rows"] = 80
    for suite in spec["eval_suites"]:
        suite["path"] = str(DEMO.parent / suite["path"])
        suite["max_items"] = 12
    spec["base_model"]["tiny"].update(
        hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, vocab_size=512
    )
    spec["training"].update(
        max_steps=6, batch_size=4, max_length=96, save_steps=3, eval_steps=3, logging_steps=2
    )
    spec["evaluation"].update(max_new_tokens=8)
    spec.update(sections)
    return spec


def smallest_pipeline() -> dict:
    """The smallest pipeline that exercises every stage: two small demo sources, one 8-item
    suite, a one-layer width-32 model, one multilora arm, 10 steps."""
    return {
        "name": "reduced",
        "description": "smallest pipeline that exercises every stage",
        "sources": [
            {"name": "instructions", "path": f"{DEMO_DATA}/instructions.json",
             "template": "alpaca", "category": "instruction", "max_rows": 40},
            {"name": "boolq", "path": f"{DEMO_DATA}/boolq_train.jsonl",
             "template": "superglue_boolq", "category": "nlu", "max_rows": 40},
        ],
        "eval_suites": [
            {"name": "boolq_mc", "path": f"{DEMO_DATA}/boolq_eval.jsonl",
             "template": "superglue_boolq", "kind": "multiple_choice", "category": "nlu",
             "max_items": 8},
        ],
        "base_model": {
            "tiny": {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64,
                     "num_layers": 1, "num_heads": 4, "max_position": 128},
        },
        "arms": [{"name": "multilora", "kind": "multilora", "n_modules": 2, "rank": 2}],
        "training": {"max_steps": 10, "batch_size": 4, "max_length": 64, "warmup_steps": 1,
                     "save_steps": 10, "eval_steps": 10, "logging_steps": 5},
        "evaluation": {"batch_size": 8, "max_new_tokens": 4},
        "registry": {"must_beat_base": False},  # a random base: its adapters sit at chance too
    }  # fmt: skip


def one_source(
    name: str, source: dict, base_model: dict | None = None, suite: dict = GOOD_SUITE
) -> dict:
    """`source` as the only training source, scored on `suite` by one lora arm; the tiny
    base model unless `base_model` is given."""
    return {
        "name": name,
        "sources": [source],
        "eval_suites": [dict(suite)],
        "base_model": base_model or {"tiny": {}},
        "arms": [{"name": "lora", "kind": "lora"}],
    }


def one_source_spec(name: str, source: dict, base_model: dict | None = None) -> PipelineSpec:
    """`one_source(...)` parsed as if it lay in tests/data_specs/bad_inputs: relative paths
    (the good suite's, a source's) resolve from that folder."""
    return parse_spec(one_source(name, source, base_model), BAD_INPUTS / "spec.yaml")
