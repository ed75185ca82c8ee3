"""The MultiLoRA linear layer: a frozen base linear plus n parallel LoRA modules.

    x ──► base(x) ───────────────────────────────────────────────┐
    │                                                            ▼
    └─► dropout ─► A (n·r × in) ─► h (n·r) ─► B ⊙ S (out × n·r) ─► + ─► y

    A = [A_1; …; A_n]            (stacked by rows)
    B = [B_1 | … | B_n]          (stacked by columns)
    S[o, i·r + j] = c · s_i      (scalar scales)   or   c · s_i[o]  (vector scales)
    c = alpha / r                (alpha / sqrt(r) with rsLoRA)

    ΔW = (B ⊙ S) · A = Σ_i c · diag(s_i) · B_i · A_i

So the adapter costs two GEMMs whatever n is; the scales are folded into B
(an out × n·r elementwise product, independent of the number of tokens).

Dtype policy: adapter parameters are always fp32. Without autocast the adapter
path casts its input to fp32 and casts the result back to the base output's
dtype before the add, as PEFT does, so a bf16 base keeps fp32 adapters without
losing small updates. Under ``torch.autocast`` (bf16 training on a GPU) the two
GEMMs follow autocast like any matmul, so the input is not cast at all; the
optimizer still updates the fp32 parameters.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import MultiLoRAConfig, MultiLoRAError

# nn.Linear's own init: kaiming_uniform_(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_KAIMING_A = math.sqrt(5)


class LowRankDelta(NamedTuple):
    """A weight update kept factored: ΔW = b @ a, never formed as a dense matrix.

    b is (out × k) and a is (k × in), k = n·r for an adapter, so the pair costs
    (out + in)·k numbers instead of out·in, and ΔW's singular values come from a
    k × k problem (``tasks.analysis.spectra``).
    """

    b: torch.Tensor
    """(out × k) fp32: the up-projections with every scale folded in."""
    a: torch.Tensor
    """(k × in) fp32: the down-projections."""


class MultiLoRALinear(nn.Module):
    """Wraps a frozen ``nn.Linear`` or GPT-2 ``Conv1D`` with a MultiLoRA adapter.

    Attributes:
        base_layer: the wrapped layer, frozen.
        lora_A: (n·r, in) fp32, the stacked down-projections.
        lora_B: (out, n·r) fp32, the stacked up-projections.
        lora_scale: (n,) or (n, out) fp32; a learnable Parameter for the ``multilora``
            init, a frozen buffer of ones for the ``lora`` init.
        use_reference: when True, forward loops over the modules one by one (slow;
            for tests and the benchmark). Fused and reference give equal results.
        merged: whether ΔW is currently added into the base weight.
    """

    def __init__(self, base_layer: nn.Module, config: MultiLoRAConfig):
        super().__init__()
        if isinstance(base_layer, Conv1D):
            # GPT-2's Conv1D stores weight as (in, out) and computes x @ W + b.
            in_features, out_features = base_layer.weight.shape
            self.fan_in_fan_out = True
        elif isinstance(base_layer, nn.Linear):
            out_features, in_features = base_layer.weight.shape
            self.fan_in_fan_out = False
        else:
            raise MultiLoRAError(
                f"MultiLoRALinear wraps nn.Linear or transformers Conv1D, got "
                f"{type(base_layer).__name__}; pick target_modules that name linear layers"
            )
        base_layer.requires_grad_(False)
        self.base_layer = base_layer
        self.config = config
        self.in_features = in_features
        self.out_features = out_features
        self.n_modules = config.n_modules
        self.rank = config.rank
        self.scaling = config.scaling
        self.use_reference = False
        self.merged = False
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

        device = base_layer.weight.device
        total_rank = config.total_rank
        self.lora_A = nn.Parameter(torch.empty(total_rank, in_features, device=device))
        self.lora_B = nn.Parameter(torch.empty(out_features, total_rank, device=device))
        scale_shape = (
            (config.n_modules,)
            if config.scale_shape == "scalar" or not config.learnable_scales
            else (config.n_modules, out_features)
        )
        if config.learnable_scales:
            self.lora_scale = nn.Parameter(torch.zeros(scale_shape, device=device))
        else:
            self.register_buffer("lora_scale", torch.ones(scale_shape, device=device))
        self.reset_adapter_parameters()

    @torch.no_grad()
    def reset_adapter_parameters(self) -> None:
        """Initialise A, B and the scales according to ``config.init``."""
        for i in range(self.n_modules):
            # Init each module's block on its own so B_i's fan-in is r (not n·r),
            # exactly as n separate nn.Linear modules would be initialised.
            nn.init.kaiming_uniform_(self._block_A(self.lora_A, i), a=_KAIMING_A)
            if self.config.init == "multilora":
                nn.init.kaiming_uniform_(self._block_B(self.lora_B, i), a=_KAIMING_A)
        if self.config.init == "lora":
            self.lora_B.zero_()
            self.lora_scale.fill_(1.0)
        else:
            self.lora_scale.zero_()

    def _block_A(self, a: torch.Tensor, i: int) -> torch.Tensor:
        return a[i * self.rank : (i + 1) * self.rank]

    def _block_B(self, b: torch.Tensor, i: int) -> torch.Tensor:
        return b[:, i * self.rank : (i + 1) * self.rank]

    def column_scale(self) -> torch.Tensor:
        """S: the multiplier of each column of B, shape (1, n·r) or (out, n·r), fp32."""
        scale = self.lora_scale * self.scaling
        if scale.dim() == 1:
            return scale.repeat_interleave(self.rank).unsqueeze(0)
        return scale.t().repeat_interleave(self.rank, dim=1)

    def effective_B(self) -> torch.Tensor:
        """B ⊙ S: the up-projection with scales and alpha/r folded in, (out, n·r) fp32."""
        return self.lora_B * self.column_scale()

    def delta_factors(self) -> LowRankDelta:
        """ΔW factored as (B ⊙ S, A): fp32 (out × n·r) and (n·r × in), whatever the base layout.

        The scales and alpha/r (alpha/sqrt(r) with rsLoRA) are all in the first factor,
        so ``b @ a`` is exactly ``delta_weight()``. ``a`` is the lora_A parameter itself.
        """
        return LowRankDelta(self.effective_B(), self.lora_A)

    def delta_weight(self) -> torch.Tensor:
        """ΔW as a dense fp32 (out × in) matrix, whatever the base layout."""
        b, a = self.delta_factors()
        return b @ a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        x_adapter = self.dropout(x)
        if self.use_reference:
            delta = self._reference_delta(x_adapter.to(self.lora_A.dtype))
            return result + delta.to(result.dtype)
        if torch.is_autocast_enabled(x.device.type):
            # Autocast runs both GEMMs in its own dtype whatever we cast to, so an fp32 copy
            # of the activations would be written and read back for nothing.
            return self._add_delta(result, x_adapter)
        if result.dtype == self.lora_A.dtype:
            return self._add_delta(result, x_adapter.to(self.lora_A.dtype))
        delta = (x_adapter.to(self.lora_A.dtype) @ self.lora_A.t()) @ self.effective_B().t()
        return result + delta.to(result.dtype)

    def _add_delta(self, result: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """result + (x A^T)(B ⊙ S)^T, the second GEMM accumulating straight into result.

        addmm adds in the GEMM's epilogue, which saves writing the (tokens × out) delta and
        a separate add kernel reading it back: the biggest tensor the adapter touches.
        """
        h = x.reshape(-1, self.in_features) @ self.lora_A.t()
        out = torch.addmm(result.reshape(-1, self.out_features), h, self.effective_B().t())
        return out.view(result.shape)

    def _reference_delta(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_i c · s_i ⊙ B_i(A_i x), one module at a time, sharing the dropped-out x."""
        delta = None
        for i in range(self.n_modules):
            h = x @ self._block_A(self.lora_A, i).t()
            y = (h @ self._block_B(self.lora_B, i).t()) * (self.lora_scale[i] * self.scaling)
            delta = y if delta is None else delta + y
        return delta

    @torch.no_grad()
    def merge(self) -> None:
        """Add ΔW into the base weight (computed in fp32, cast back to the base dtype)."""
        if self.merged:
            return
        self._add_to_base(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ΔW from the base weight again. Exact in fp32; bf16 bases keep round-off."""
        if not self.merged:
            return
        self._add_to_base(-self.delta_weight())
        self.merged = False

    def _add_to_base(self, delta: torch.Tensor) -> None:
        weight = self.base_layer.weight
        if self.fan_in_fan_out:
            delta = delta.t()
        weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, n_modules={self.n_modules}, "
            f"rank={self.rank}, scaling={self.scaling:g}, scales={tuple(self.lora_scale.shape)}, "
            f"init={self.config.init}"
        )
