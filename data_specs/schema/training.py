"""What is trained and how: the arms (an adapter kind and its settings, or a learning-rate
grid to probe) and the training settings they all share.

The arms' adapter fields are MultiLoRAConfig's (models/multilora/config.py), read from its
dataclass and its attribute docstrings, so they are declared once, by the layer that uses
them. Arms and training are one file because an arm's learning rates fall back on
training's and its probe grid is decided against them.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from typing import Literal

from pydantic import Field, PositiveFloat, create_model, model_validator

from multilora_pipeline.data_specs.schema.strict import NAME_RE, Strict
from multilora_pipeline.models.multilora.config import MultiLoRAConfig, MultiLoRAConfigError


def _attribute_docstrings(cls) -> dict[str, str]:
    """Field name -> the docstring under it in `cls`'s source (as pydantic reads its own)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {
        a.target.id: inspect.cleandoc(b.value.value)
        for a, b in zip(body, body[1:], strict=False)
        if isinstance(a, ast.AnnAssign)
        and isinstance(b, ast.Expr)
        and isinstance(b.value, ast.Constant)
        and isinstance(b.value.value, str)
    }


def _adapter_fields() -> dict:
    """MultiLoRAConfig's fields as pydantic fields (type, default, docstring): the adapter
    settings are declared once, by the layer that uses them. `init` is not among them: the
    arm's kind decides it."""
    hints = typing.get_type_hints(MultiLoRAConfig)
    docs = _attribute_docstrings(MultiLoRAConfig)
    fields = {}
    for f in dataclasses.fields(MultiLoRAConfig):
        if f.name == "init":
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        fields[f.name] = (hints[f.name], Field(default=default, description=docs[f.name]))
    return fields


AdapterSettings = create_model(
    "AdapterSettings",
    __base__=Strict,
    __doc__="An arm's adapter settings: MultiLoRAConfig's fields (models/multilora/config.py).",
    **_adapter_fields(),
)
ADAPTER_FIELDS = tuple(AdapterSettings.model_fields)
MAX_MODULES = 64
"""Parallel modules per weight a spec may ask for (the paper uses 2 to 8)."""


class ArmSpec(AdapterSettings):
    """One training arm: an adapter kind and its size. Every arm sees the same data and steps.

    The adapter fields (n_modules, rank, alpha, dropout, target_modules, scale_shape,
    use_rslora) are MultiLoRAConfig's, documented there; a lora arm uses n_modules = 1 and
    one fixed scale whatever they say. Control arm: rank = the multilora arm's n_modules * rank.
    """

    @model_validator(mode="after")
    def _one_learning_rate_setting(self):
        if self.learning_rate is not None and self.learning_rates is not None:
            raise ValueError("give learning_rate or learning_rates (a grid to probe), not both")
        if self.scale_learning_rate is not None and self.scale_learning_rates is not None:
            raise ValueError(
                "give scale_learning_rate or scale_learning_rates (a grid to probe), not both"
            )
        if self.scale_learning_rates is not None and self.kind != "multilora":
            raise ValueError(f"scale_learning_rates is for multilora arms; this arm is {self.kind}")
        return self

    @model_validator(mode="after")
    def _adapter_is_valid(self):
        """The arm's own adapter values are checked whatever its kind (a lora arm then uses
        one module, a full arm none), so a typo never passes silently."""
        settings = {name: getattr(self, name) for name in ADAPTER_FIELDS}
        try:
            MultiLoRAConfig(**settings, init="multilora")
        except MultiLoRAConfigError as exc:
            raise ValueError(str(exc)) from None
        if self.n_modules > MAX_MODULES:
            raise ValueError(f"n_modules must be at most {MAX_MODULES}, got {self.n_modules}")
        return self

    def probe_grid(self, training: TrainingSpec) -> list[tuple[float, float | None]]:
        """(learning rate, scale learning rate) pairs to probe; empty when the arm's
        learning rates are fixed (its own, or training's)."""
        rates = self.learning_rates
        if rates is None and self.learning_rate is None:
            rates = training.learning_rates
        if rates is None and self.scale_learning_rates is None:
            return []
        rates = rates or [self.learning_rate or training.learning_rate]
        scales = self.scale_learning_rates or [self.scale_learning_rate]
        return [(rate, scale) for rate in rates for scale in scales]

    def with_learning_rates(
        self, rate: float, scale: float | None, training: TrainingSpec
    ) -> ArmSpec:
        """This arm with its learning rates fixed (a probe's, or the probes' winner). A rate
        the arm would use anyway is stored as unset (training's rate; for the scales, the
        arm's rate), so a probe at the rate an earlier run used has that run's identity."""
        own = None if self.learning_rate is None and rate == training.learning_rate else rate
        return self.model_copy(
            update={
                "learning_rate": own,
                "scale_learning_rate": None if scale == rate else scale,
                "learning_rates": None,
                "scale_learning_rates": None,
            }
        )

    def identity(self) -> dict:
        """What of the arm decides its trained weights (a grid only chooses among them)."""
        return self.model_dump(mode="json", exclude={"learning_rates", "scale_learning_rates"})

    def adapter_config(self) -> MultiLoRAConfig | None:
        """The MultiLoRA layer settings of the arm; None for full fine-tuning."""
        if self.kind == "full":
            return None
        settings = {name: getattr(self, name) for name in ADAPTER_FIELDS}
        if self.kind == "lora":  # the control: one module with one fixed scale
            settings.update(n_modules=1, scale_shape="scalar")
        return MultiLoRAConfig(**settings, init=self.kind)

    name: str = Field(pattern=NAME_RE)
    """Unique short name; the MLflow child run and the registered version are tagged with it."""
    kind: Literal["multilora", "lora", "full"]
    """multilora: n parallel LoRAs with learnable zero-init scales; lora: the control; full: fine-tune all."""
    learning_rate: float | None = Field(default=None, gt=0)
    """Overrides training.learning_rate for this arm."""
    learning_rates: list[PositiveFloat] | None = Field(default=None, min_length=1, max_length=8)
    """A grid to choose this arm's learning rate from instead of fixing it: each candidate
    trains a probe (training.probe_steps) and the one with the lowest held-out loss on the
    mixture's validation split wins (never the evaluation suites). Overrides
    training.learning_rates; not with learning_rate."""
    scale_learning_rate: float | None = Field(default=None, gt=0)
    """Learning rate of the MultiLoRA scales; None uses the arm's learning rate."""
    scale_learning_rates: list[PositiveFloat] | None = Field(
        default=None, min_length=1, max_length=8
    )
    """multilora arms: a grid for the scales' learning rate, probed jointly with the
    learning-rate grid (every pair); not with scale_learning_rate."""
    scale_weight_decay: float = Field(default=0.0, ge=0)
    """Weight decay of the MultiLoRA scales (decaying them pulls the update back to zero)."""


# TrainingSpec fields added after runs were first trained, with their defaults: left out of a
# run's identity while at the default, which trains as before they existed.
ADDED_LATER = {"loss_weighting": "token", "mixed_precision": "auto"}


class TrainingSpec(Strict):
    """Shared training settings; every arm uses exactly these."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data):
        if isinstance(data, dict) and "chat_template" in data:
            raise ValueError(
                "chat_template moved out of training: set the top-level prompt_format "
                "(auto | chat | plain), which training and every evaluation stage use"
            )
        return data

    max_steps: int = Field(default=100, gt=0)
    """Optimizer steps per arm (ignored when epochs is set)."""
    epochs: float | None = Field(default=None, gt=0)
    """Passes over the mixture instead of a step count (fractions allowed)."""
    processes: int | None = Field(default=None, ge=1)
    """Data-parallel processes: None = one per visible GPU (1 on CPU). batch_size is per process.
    More than one on CPU runs over gloo (slow; for testing the distributed path)."""
    batch_size: int = Field(default=8, gt=0)
    """Sequences per device per micro-batch."""
    grad_accum: int = Field(default=1, gt=0)
    """Micro-batches per optimizer step."""
    learning_rate: float = Field(default=1e-3, gt=0)
    """Peak learning rate (adapters train well at 1e-4..1e-3; full fine-tuning lower)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay for the adapter matrices."""
    warmup_steps: int = Field(default=10, ge=0)
    """Linear warmup steps before the cosine decay."""
    max_length: int = Field(default=256, ge=8)
    """Tokens per sequence; longer examples are truncated from the right (the response end)."""
    pack: bool = True
    """Pack several examples into one sequence (no attention across examples)."""
    loss_on_prompt: bool = False
    """Also train on prompt tokens (default: loss on the response only)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto uses a GPU when one is visible; cuda fails clearly when none is."""
    work_pool: str | None = Field(default=None, min_length=1)
    """Train on this Prefect work pool instead of in the pipeline's process: each run is a
    flow run of the `mlora-train` deployment, executed by a worker of the pool (a GPU
    machine), while the pipeline scores and registers where it runs (README, "A team
    setup"). `mlora run --training-pool` overrides it. Where a run trains does not change
    its weights: the same run is found again whichever pool trained it."""
    loss_weighting: Literal["token", "example"] = "token"
    """token: the loss is the mean over all response tokens in a batch (transformers' own), so
    a source's weight in training is its share of response tokens: a yes/no answer counts two
    tokens against a rationale's hundred. example: the mean over examples of each example's
    mean token loss, so every example counts the same and the mixture's weights are the
    sources' weights in training too. The held-out loss stays token-weighted either way."""
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    """bf16: train under bf16 autocast (the matmuls in bf16, the adapter's weights, the
    optimizer and the loss in fp32) on a GPU, or on a CPU that computes bf16 natively
    (AVX512, AVX512-BF16 or AMX), where a SmolLM2-135M step is about twice as fast
    (benchmarks/RESULTS.md). An AVX2-only CPU would emulate it, 30-90x slower than fp32
    (benchmarks/bf16_matmul.py), so there the arm trains in fp32, with a warning. auto: bf16
    on a GPU when the weights are bf16 (base_model.dtype auto or bfloat16), fp32 on a CPU.
    Evaluation always runs in the weights' dtype."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (non-reentrant): less memory, ~20-30% slower."""
    compile: bool = False
    """torch.compile each decoder block (compiled once, reused by every layer): faster steps on
    a GPU after a one-off compile of seconds to a minute. Needs a C compiler on CPU."""
    save_steps: int = Field(default=50, gt=0)
    """Checkpoint every N steps (resume continues from the last one)."""
    eval_steps: int = Field(default=50, gt=0)
    """Compute validation loss every N steps."""
    logging_steps: int = Field(default=5, gt=0)
    """Log loss, learning rate, grad norm and tokens/s every N steps."""
    seed: int = 0
    """Seed for adapter init, data order and dropout (same for every arm)."""
    seeds: list[int] | None = Field(default=None, min_length=1, max_length=16)
    """Train every arm once per seed (each seed is `seed` for its runs: the same data order
    for every arm); the summary, the parent run and the gate then use the mean and spread
    over seeds. None trains once, with `seed`."""
    learning_rates: list[PositiveFloat] | None = Field(default=None, min_length=1, max_length=8)
    """A learning-rate grid for every arm that fixes none of its own (arm.learning_rate or
    arm.learning_rates): see ArmSpec.learning_rates."""
    probe_steps: int | None = Field(default=None, gt=0)
    """Optimizer steps of each learning-rate probe; None probes with the full run (max_steps
    or epochs), and the winning probe at the first seed is then that seed's run."""

    @model_validator(mode="after")
    def _seeds_are_distinct(self):
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self

    def identity(self) -> dict:
        """What of these settings decides one run's weights (seeds and the grid choose runs)."""
        identity = self.model_dump(
            mode="json", exclude={"seeds", "learning_rates", "probe_steps", "work_pool"}
        )
        for name, default in ADDED_LATER.items():  # runs trained before them keep their keys
            if identity[name] == default:
                del identity[name]
        return identity

    @property
    def run_seeds(self) -> list[int]:
        """The seeds every arm is trained with."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def for_run(self, seed: int, *, probe: bool = False) -> TrainingSpec:
        """The settings of one training run: one seed, no grid, a probe's length if `probe`."""
        update: dict = {"seed": seed, "seeds": None, "learning_rates": None, "probe_steps": None}
        if probe and self.probe_steps is not None:
            update.update(max_steps=self.probe_steps, epochs=None)
        return self.model_copy(update=update)
