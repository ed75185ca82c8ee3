"""MultiLoRA configuration and the package's error types.

The config is a plain dataclass whose attribute docstrings are the help text.
It is validated on construction, so a bad combination fails where it is
written, not deep inside a training run.

    n_modules=4, rank=8, alpha=None -> four rank-8 modules, scaling alpha/r = 1,
    learnable zero-initialised scales; equal in function class to one rank-32 LoRA.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Bumped whenever the saved adapter layout (tensor names, JSON keys) changes;
# load_adapter refuses files from a newer format instead of misreading them.
FORMAT_VERSION = 1

SCALE_SHAPES = ("scalar", "vector")
INIT_SCHEMES = ("multilora", "lora")


class MultiLoRAError(ValueError):
    """Base class of every error raised by ``models.multilora``."""


class MultiLoRAConfigError(MultiLoRAError):
    """A config field, or a combination of fields, is invalid."""


class TargetNotFoundError(MultiLoRAError):
    """``target_modules`` matched no linear layer of the model (or a non-linear one)."""


class AdapterFormatError(MultiLoRAError):
    """A saved adapter cannot be loaded: wrong version, missing file, key or shape mismatch."""


@dataclass
class MultiLoRAConfig:
    """How to adapt a model with MultiLoRA (or plain LoRA, as the control arm)."""

    n_modules: int = 4
    """Number of parallel LoRA modules per adapted linear layer (n). Total rank is n * rank."""

    rank: int = 8
    """Rank of each module (r). Higher means more capacity and more memory."""

    alpha: float | None = None
    """Scaling numerator: each module's output is multiplied by alpha / rank (or
    alpha / sqrt(rank) with ``use_rslora``). None means alpha = rank, so the scaling is 1."""

    dropout: float = 0.0
    """Dropout probability on the adapter input. One mask is shared by all modules,
    which is what keeps the fused and per-module forms equal in training."""

    target_modules: list[str] | str = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    """Which linear layers to adapt. A list of name suffixes ("q_proj" matches
    "model.layers.0.self_attn.q_proj"), or one regex string starting with "^"
    that must match the full module path."""

    scale_shape: str = "scalar"
    """"scalar": one learnable scale per module (the paper). "vector": one per module
    and output channel (n x d_out), as a public re-implementation does."""

    init: str = "multilora"
    """"multilora": Kaiming-uniform A and B, scales zero (so the update is zero at step 0).
    "lora": Kaiming-uniform A, zero B, no learnable scale; requires n_modules == 1."""

    use_rslora: bool = False
    """Scale by alpha / sqrt(rank) instead of alpha / rank (rank-stabilised LoRA)."""

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise MultiLoRAConfigError("invalid MultiLoRAConfig:\n  - " + "\n  - ".join(problems))
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)

    def _problems(self):
        """Yield one human-readable line per invalid field or combination."""
        if not _is_int(self.n_modules) or self.n_modules < 1:
            yield f"n_modules must be an integer >= 1, got {self.n_modules!r}"
        if not _is_int(self.rank) or self.rank < 1:
            yield f"rank must be an integer >= 1, got {self.rank!r}"
        if self.alpha is not None and (
            not isinstance(self.alpha, int | float) or not math.isfinite(self.alpha)
        ):
            yield f"alpha must be a finite number or None (None means alpha = rank), got {self.alpha!r}"
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            yield f"dropout must be in [0, 1), got {self.dropout!r}"
        if self.scale_shape not in SCALE_SHAPES:
            yield f"scale_shape must be one of {SCALE_SHAPES}, got {self.scale_shape!r}"
        if self.init not in INIT_SCHEMES:
            yield f"init must be one of {INIT_SCHEMES}, got {self.init!r}"
        if self.init == "lora" and self.n_modules != 1:
            yield (
                f"init='lora' is the plain-LoRA control arm and needs n_modules=1 (got "
                f"{self.n_modules}); for a fair control use n_modules=1, rank={self.n_modules}*"
                f"{self.rank}={self.n_modules * self.rank if _is_int(self.n_modules) and _is_int(self.rank) else '?'}"
            )
        if self.init == "lora" and self.scale_shape != "scalar":
            yield (
                "scale_shape applies to init='multilora' only; init='lora' has no learnable "
                "scale, so leave scale_shape='scalar'"
            )
        yield from _target_problems(self.target_modules)

    @property
    def lora_alpha(self) -> float:
        """alpha with the None default resolved (alpha = rank)."""
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def scaling(self) -> float:
        """The fixed per-module multiplier: alpha / rank, or alpha / sqrt(rank) with rsLoRA."""
        denominator = math.sqrt(self.rank) if self.use_rslora else self.rank
        return self.lora_alpha / denominator

    @property
    def total_rank(self) -> int:
        """n_modules * rank: the rank of the equivalent single LoRA."""
        return self.n_modules * self.rank

    @property
    def learnable_scales(self) -> bool:
        """Whether the per-module scales are trained (False for the plain-LoRA arm)."""
        return self.init == "multilora"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields plus ``format_version``."""
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MultiLoRAConfig:
        """Rebuild a config written by ``to_dict``; rejects newer formats and unknown keys."""
        data = dict(data)
        version = data.pop("format_version", None)
        if version is None:
            raise MultiLoRAConfigError(
                "config has no 'format_version'; it was not written by MultiLoRAConfig.to_dict"
            )
        if not _is_int(version) or version > FORMAT_VERSION:
            raise MultiLoRAConfigError(
                f"config format_version {version!r} is newer than this code understands "
                f"({FORMAT_VERSION}); update the code that loads it"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MultiLoRAConfigError(
                f"config has unknown keys {unknown}; known keys are {sorted(known)}"
            )
        return cls(**data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _target_problems(target: Any):
    if isinstance(target, str):
        if not target.startswith("^"):
            yield (
                f"target_modules as a string must be a regex starting with '^' (got {target!r}); "
                f"for names use a list, e.g. [{target!r}]"
            )
            return
        try:
            re.compile(target)
        except re.error as exc:
            yield f"target_modules regex {target!r} does not compile: {exc}"
        return
    if not isinstance(target, list | tuple) or not target:
        yield f"target_modules must be a non-empty list of names or a '^' regex, got {target!r}"
        return
    bad = [t for t in target if not isinstance(t, str) or not t]
    if bad:
        yield f"target_modules entries must be non-empty strings, got {bad!r}"
