"""The train stage on a tiny model: loss goes down, checkpoints resume exactly, bad settings fail early."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters
from transformers import TrainerCallback
from transformers import default_data_collator as default_collate

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.data_specs.record import make_record, records_to_table
from multilora_pipeline.data_specs.schema import ArmSpec, TrainingSpec
from multilora_pipeline.models.prompt_format import PromptFormat
from multilora_pipeline.models.tiny import BLOCK_LINEARS, build_tiny_model
from multilora_pipeline.models.training_speed import compile_blocks
from multilora_pipeline.tasks.training import loading
from multilora_pipeline.tasks.training.loading import resolve_device
from multilora_pipeline.tasks.training.train import train_arm

pytestmark = pytest.mark.slow  # real training runs: left out by -m "not slow"

WORDS = ["apple", "river", "stone", "cloud", "maple", "otter", "piano", "quartz"]


def _records():
    rows = []
    for i in range(48):
        a, b = i % 7, i % 5
        rows.append(
            make_record(
                source="math",
                task="add",
                category="math",
                prompt=f"What is {a} plus {b}?",
                response=f" {a + b}",
            )
        )
        w = WORDS[i % len(WORDS)]
        rows.append(
            make_record(
                source="inst",
                task="repeat",
                category="instruction",
                prompt=f"Repeat the word {w}.",
                response=f" {w} {w}",
            )
        )
    return records_to_table(rows)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("train")
    table = _records()
    (root / "mix").mkdir()
    pq.write_table(table, root / "mix" / "shard-00000.parquet")
    pq.write_table(table.slice(0, 16), root / "val.parquet")
    texts = [
        p + r
        for p, r in zip(table["prompt"].to_pylist(), table["response"].to_pylist(), strict=True)
    ]
    model = build_tiny_model(
        root / "base",
        texts,
        vocab_size=400,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=2,
        max_position=64,
    )
    return root, str(model)


def on_mix(setup) -> dict:
    """train_arm's data arguments: the tiny base model on the test mixture, no validation."""
    root, base = setup
    return dict(model_path=base, train_path=root / "mix", validation_path=None)


TRAINING = TrainingSpec(
    max_steps=8,
    batch_size=4,
    learning_rate=3e-2,
    warmup_steps=1,
    max_length=48,
    save_steps=4,
    eval_steps=4,
    logging_steps=2,
)
ARMS = {
    "multilora": ArmSpec(
        name="multilora",
        kind="multilora",
        n_modules=2,
        rank=2,
        target_modules=BLOCK_LINEARS["llama"],
    ),
    "lora": ArmSpec(name="lora", kind="lora", rank=4, target_modules=BLOCK_LINEARS["llama"]),
}


@pytest.mark.parametrize("arm", ARMS.values(), ids=ARMS.keys())
def test_loss_goes_down_and_adapter_is_exported(setup, tmp_path, arm):
    root, base = setup
    result = train_arm(
        arm=arm,
        training=TRAINING,
        model_path=base,
        train_path=root / "mix",
        validation_path=root / "val.parquet",
        output_dir=tmp_path / arm.name,
    )
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert result.steps == 8 and len(losses) == 4
    assert losses[-1] < losses[0]
    assert (tmp_path / arm.name / "peft" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / arm.name / "result.json").read_text())["steps"] == 8
    assert not list((tmp_path / arm.name).glob("checkpoint-*"))


class _AutocastSeen(TrainerCallback):
    """Records, at each step's end, whether the model's blocks ran under CPU autocast."""

    def __init__(self):
        self.seen: list[tuple[bool, torch.dtype]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        block = model.model.layers[0].mlp
        block.register_forward_hook(
            lambda _m, _i, out: self.seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        )


@pytest.mark.parametrize(
    "precision, native_bf16, autocast",
    [
        ("auto", True, False),
        ("bf16", True, True),
        ("bf16", False, False),
        ("no", True, False),
    ],
)
def test_mixed_precision_follows_the_cpus_bf16_support(
    setup, tmp_path, monkeypatch, caplog, precision, native_bf16, autocast
):
    """auto trains a CPU arm in fp32; bf16 takes bf16 where the CPU multiplies it natively,
    and fp32 with a warning where it would be emulated (87x slower than fp32 on an AVX2 CPU)."""
    monkeypatch.setattr(loading, "cpu_computes_bf16", lambda: native_bf16)
    seen = _AutocastSeen()
    training = TRAINING.model_copy(update={"mixed_precision": precision, "max_steps": 4})
    result = train_arm(
        arm=ARMS["lora"],
        training=training,
        callbacks=[seen],
        **on_mix(setup),
        output_dir=tmp_path / "lora",
    )
    assert seen.seen and all(
        s == (autocast, torch.bfloat16 if autocast else torch.float32) for s in seen.seen
    )
    assert ("no native bf16" in caplog.text) == (precision == "bf16" and not native_bf16)
    assert math.isfinite(result.train_loss)
    weights = _weights(tmp_path / "lora")
    assert all(w.dtype == torch.float32 for w in weights.values())  # the adapter stays fp32


class _Crash(TrainerCallback):
    """Raise in the middle of training, after the step-4 checkpoint was written."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 6:
            raise RuntimeError("simulated crash")


def test_resume_from_checkpoint_gives_the_same_adapter(setup, tmp_path):
    kwargs = dict(
        arm=ARMS["multilora"],
        training=TRAINING,
        **on_mix(setup),
    )
    train_arm(**kwargs, output_dir=tmp_path / "straight")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_arm(**kwargs, output_dir=tmp_path / "crashed", callbacks=[_Crash()])
    assert (tmp_path / "crashed" / "checkpoint-4").is_dir()
    resumed = train_arm(**kwargs, output_dir=tmp_path / "crashed")
    assert resumed.resumed_from_step == 4 and resumed.steps == 8
    # The loss curve spans the crash: steps logged before the checkpoint come from its state.
    assert [h["step"] for h in resumed.history if "loss" in h] == [2, 4, 6, 8]
    straight, again = _weights(tmp_path / "straight"), _weights(tmp_path / "crashed")
    assert straight.keys() == again.keys()
    for key in straight:
        torch.testing.assert_close(again[key], straight[key], rtol=1e-5, atol=1e-6)


def test_cuda_demanded_without_gpu_fails_before_work():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(TrainingError, match="no GPU is visible"):
        resolve_device("cuda")


def _weights(folder):
    return load_file(str(folder / "adapter" / "adapter.safetensors"))


def test_two_gloo_processes_follow_the_single_process_loss_curve(setup, tmp_path):
    """Data parallelism over 2 CPU processes == one process with the same global batch."""
    from multilora_pipeline.tasks.training.launch import launch_arm

    kwargs = dict(arm=ARMS["lora"], **on_mix(setup))
    single = launch_arm(
        training=TRAINING.model_copy(update={"batch_size": 4}),
        output_dir=tmp_path / "one",
        **kwargs,
    )
    double = launch_arm(
        training=TRAINING.model_copy(update={"batch_size": 2, "processes": 2}),
        output_dir=tmp_path / "two",
        **kwargs,
    )
    one = [h["loss"] for h in single.history if "loss" in h]
    two = [h["loss"] for h in double.history if "loss" in h]
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=2e-3)
    assert (tmp_path / "two" / "peft" / "adapter_model.safetensors").is_file()


def test_full_fine_tune_arm_trains_every_weight_and_is_analysable(setup, tmp_path):
    from multilora_pipeline.data_specs.schema import PipelineSpec
    from multilora_pipeline.tasks.training.arm_models import arm_deltas, load_for_inference

    _, base = setup
    arm = ArmSpec(name="full", kind="full", target_modules=["q_proj", "v_proj"])
    result = train_arm(
        arm=arm,
        training=TRAINING.model_copy(update={"learning_rate": 1e-3}),
        **on_mix(setup),
        output_dir=tmp_path / "full",
    )
    assert result.trainable_share == 1.0 and result.peft_dir is None
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0]
    spec = PipelineSpec.model_validate(
        {
            "name": "t",
            "sources": [{"name": "s", "path": "x.jsonl", "template": "alpaca"}],
            "eval_suites": [{"name": "e", "path": "y.jsonl", "template": "mmlu"}],
            "base_model": {"name_or_path": base},
            "arms": [arm.model_dump()],
        }
    )
    deltas = arm_deltas(spec, base, result)
    assert sorted(deltas) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    assert all(d.abs().max() > 0 for d in deltas.values())
    model, _, _ = load_for_inference(spec, base, result)
    assert not model.training


def test_scales_get_their_own_learning_rate_and_weight_decay(setup):
    from multilora_pipeline.tasks.training.dataset import build_dataset
    from multilora_pipeline.tasks.training.loading import load_base
    from multilora_pipeline.tasks.training.train import ArmTrainer, prepare_arm_model

    root, base = setup
    arm = ARMS["multilora"].model_copy(
        update={"scale_learning_rate": 0.5, "scale_weight_decay": 0.25}
    )
    model, tokenizer = load_base(base, revision=None, dtype=torch.float32, trust_remote_code=False)
    prepare_arm_model(model, arm)
    data, _ = build_dataset(root / "mix", PromptFormat.resolve(tokenizer), TRAINING)
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to="none")
    trainer = ArmTrainer(model=model, args=args, train_dataset=data, arm=arm, training=TRAINING)
    groups = {g["name"]: g for g in trainer.create_optimizer().param_groups}
    assert groups["scales"]["lr"] == 0.5 and groups["scales"]["weight_decay"] == 0.25
    assert groups["lora"]["lr"] == TRAINING.learning_rate
    n_layers = len(BLOCK_LINEARS["llama"]) * 2
    assert len(groups["scales"]["params"]) == n_layers
    assert len(groups["lora"]["params"]) == 2 * n_layers


@pytest.mark.parametrize("accumulated", [False, True], ids=["batch", "accumulated"])
def test_training_loss_is_the_models_own(setup, tmp_path, accumulated):
    """ArmTrainer's loss (the output head only on response positions) is Trainer's own, with
    the normalisation Trainer expects: per batch, or over the accumulated batch's items."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    from multilora_pipeline.tasks.training.dataset import build_dataset
    from multilora_pipeline.tasks.training.loading import load_base
    from multilora_pipeline.tasks.training.train import ArmTrainer, prepare_arm_model

    root, base = setup
    model, tokenizer = load_base(base, revision=None, dtype=torch.float32, trust_remote_code=False)
    prepare_arm_model(model, ARMS["lora"])
    data, _ = build_dataset(root / "mix", PromptFormat.resolve(tokenizer), TRAINING)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = ArmTrainer(
        model=model, args=args, train_dataset=data, arm=ARMS["lora"], training=TRAINING
    )
    inputs = default_data_collator(data[:4])
    assert (inputs["labels"] == -100).float().mean() > 0.3  # prompts are masked out
    items = int((inputs["labels"][:, 1:] != -100).sum()) * 3 if accumulated else None
    ours = trainer.compute_loss(model, dict(inputs), num_items_in_batch=items)
    own = Trainer.compute_loss(trainer, model, dict(inputs), num_items_in_batch=items)
    torch.testing.assert_close(ours, own, rtol=1e-5, atol=1e-6)
    if accumulated:  # a third of the accumulated batch's items: a third of the mean
        torch.testing.assert_close(ours * 3, trainer.compute_loss(model, dict(inputs)))


def test_example_weighting_averages_each_examples_own_mean_in_a_packed_block(setup):
    """loss_weighting: example gives every example of a packed block the same weight: the
    mean of the examples' mean token losses, each example scored on its own."""
    from transformers import Trainer, TrainingArguments

    from multilora_pipeline.tasks.training.loading import load_base
    from multilora_pipeline.tasks.training.tokenise import (
        TokenisedExample,
        pack_examples,
        pad_examples,
    )
    from multilora_pipeline.tasks.training.train import response_loss

    _, base = setup
    model, _ = load_base(base, revision=None, dtype=torch.float32, trust_remote_code=False)
    torch.manual_seed(0)
    examples = []
    for prompt, answer in ((6, 1), (5, 9), (8, 2), (4, 12)):  # short and long answers
        ids = torch.randint(4, 300, (prompt + answer,)).tolist()
        examples.append(TokenisedExample(ids, [-100] * prompt + ids[prompt:]))
    packed = default_collate(pack_examples(examples, 24, pad_id=0))
    assert packed["input_ids"].shape[0] == 3  # the first block packs two examples
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to="none"),
    )
    ours = response_loss(trainer, model, packed, per_example=True)
    alone = [
        response_loss(trainer, model, default_collate(pad_examples([ex], 24, pad_id=0)))
        for ex in examples
    ]
    torch.testing.assert_close(ours, torch.stack(alone).mean(), rtol=1e-5, atol=1e-6)
    tokens = response_loss(trainer, model, packed)  # token-weighted: the long answers dominate
    assert not torch.allclose(tokens, ours, rtol=1e-3)


def test_epochs_and_gradient_checkpointing(setup, tmp_path):
    root, base = setup
    training = TRAINING.model_copy(
        update={"epochs": 1.0, "gradient_checkpointing": True, "logging_steps": 1}
    )
    result = train_arm(
        arm=ARMS["lora"],
        training=training,
        **on_mix(setup),
        output_dir=tmp_path / "e",
    )
    from transformers import AutoTokenizer

    from multilora_pipeline.tasks.training.dataset import build_dataset

    # One epoch = every packed sequence once at batch 4, activations recomputed in backward.
    fmt = PromptFormat.resolve(AutoTokenizer.from_pretrained(base))
    _, stats = build_dataset(root / "mix", fmt, training)
    assert result.steps == math.ceil(stats["sequences"] / training.batch_size) != TRAINING.max_steps
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == result.steps and not any(math.isnan(x) for x in losses)


def test_attention_kernel_is_configurable_and_equivalent(setup, tmp_path):
    kwargs = dict(
        arm=ARMS["lora"],
        training=TRAINING,
        **on_mix(setup),
    )
    sdpa = train_arm(**kwargs, output_dir=tmp_path / "sdpa")
    eager = train_arm(**kwargs, output_dir=tmp_path / "eager", attn_implementation="eager")
    # Same packed block-diagonal attention through either kernel: the same loss curve.
    assert [h["loss"] for h in eager.history if "loss" in h] == pytest.approx(
        [h["loss"] for h in sdpa.history if "loss" in h], rel=1e-4
    )


def test_compiled_training_follows_the_eager_loss_curve(setup, tmp_path, monkeypatch):
    # training.compile wired end to end; aot_eager traces like inductor without its C++ build.
    import multilora_pipeline.tasks.training.train as train_module

    kwargs = dict(arm=ARMS["multilora"], **on_mix(setup))
    eager = train_arm(**kwargs, training=TRAINING, output_dir=tmp_path / "eager")
    monkeypatch.setattr(
        train_module, "compile_blocks", partial(compile_blocks, backend="aot_eager")
    )
    torch._dynamo.reset()
    counters.clear()
    compiled = train_arm(
        **kwargs,
        training=TRAINING.model_copy(update={"compile": True}),
        output_dir=tmp_path / "compiled",
    )
    assert counters["stats"]["unique_graphs"] >= 1  # the blocks really ran compiled
    torch._dynamo.reset()
    assert [h["loss"] for h in compiled.history if "loss" in h] == pytest.approx(
        [h["loss"] for h in eager.history if "loss" in h], rel=1e-4
    )


def test_a_failing_compile_is_a_training_error(setup, tmp_path, monkeypatch):
    import multilora_pipeline.tasks.training.train as train_module

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(
        train_module, "compile_blocks", partial(compile_blocks, backend=broken_backend)
    )
    with pytest.raises(TrainingError, match="training.compile: torch.compile failed"):
        train_arm(
            arm=ARMS["lora"],
            training=TRAINING.model_copy(update={"compile": True}),
            **on_mix(setup),
            output_dir=tmp_path / "broken",
        )
    torch._dynamo.reset()


def test_trainers_held_out_loss_is_the_token_weighted_one_evaluation_reports(setup, tmp_path):
    """Validation rows with one-token answers and long answers: a mean of block means would
    weight them unlike the evaluation stage's val_loss; the two must be one number."""
    import pyarrow.parquet as pq

    from multilora_pipeline.models.multilora import load_adapter
    from multilora_pipeline.tasks.evaluation.evaluate import heldout_loss
    from multilora_pipeline.tasks.training.loading import load_base

    root, base = setup
    rows = [
        make_record(
            source="s",
            task="t",
            category="math",
            prompt=f"What is {i} plus 1?",
            response=f" {i + 1}",
        )
        for i in range(6)
    ] + [
        make_record(
            source="s",
            task="t",
            category="instruction",
            prompt="Repeat the words.",
            response=" " + " ".join(WORDS * 2),
        )
        for _ in range(3)
    ]
    pq.write_table(records_to_table(rows), tmp_path / "val.parquet")
    training = TRAINING.model_copy(update={"max_steps": 4, "eval_steps": 4, "pack": False})
    result = train_arm(
        arm=ARMS["lora"],
        training=training,
        model_path=base,
        train_path=root / "mix",
        validation_path=tmp_path / "val.parquet",
        output_dir=tmp_path / "lora",
    )
    model, tokenizer = load_base(base, revision=None, dtype=torch.float32, trust_remote_code=False)
    load_adapter(model, result.adapter_dir)
    fmt = PromptFormat.resolve(tokenizer, "plain")
    ((nll, tokens),) = heldout_loss(
        model, fmt, pq.read_table(tmp_path / "val.parquet"), batch_size=4, max_length=48
    ).values()
    assert result.eval_loss == pytest.approx(nll / tokens, rel=1e-4)
