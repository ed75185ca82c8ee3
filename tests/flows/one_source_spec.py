"""A minimal valid spec around one source, for data-flow tests of a single input."""

from __future__ import annotations

from pathlib import Path

from multilora_pipeline.data_specs.schema import PipelineSpec, parse_spec

BAD_INPUTS = Path(__file__).resolve().parents[1] / "data_specs" / "bad_inputs"


def one_source_spec(name: str, source: dict, base_model: dict | None = None) -> PipelineSpec:
    """`source` as the only training source, scored against the one-item good suite that
    tests/data_specs/bad_inputs ships (relative paths resolve from that folder); the tiny
    base model unless `base_model` is given."""
    data = {
        "name": name,
        "sources": [source],
        "eval_suites": [
            {
                "name": "good",
                "path": "good.jsonl",
                "template": "gsm8k",
                "kind": "generation",
                "category": "math",
            }
        ],
        "base_model": base_model or {"tiny": {}},
        "arms": [{"name": "lora", "kind": "lora"}],
    }
    return parse_spec(data, BAD_INPUTS / "spec.yaml")
