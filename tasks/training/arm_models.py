"""Load what an arm produced, for scoring and analysis: base + adapter, or the full fine-tune."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from multilora_pipeline.data_specs.schema import PipelineSpec
from multilora_pipeline.models.multilora import (
    LowRankDelta,
    delta_factors,
    load_adapter,
    merge_adapters,
)
from multilora_pipeline.models.multilora.model import matching_module_names
from multilora_pipeline.tasks.training.base_model import load_revision
from multilora_pipeline.tasks.training.loading import (
    BASE_MODEL_FIELD,
    load_base,
    model_load_errors,
    resolve_device,
    resolve_dtype,
)
from multilora_pipeline.tasks.training.train import ArmResult


def load_for_inference(spec: PipelineSpec, base: str, result: ArmResult | None, *, merge=True):
    """(model, tokenizer, device) in eval mode: the base model when `result` is None."""
    device = resolve_device(spec.evaluation_device, spec.evaluation_device_field)
    dtype = resolve_dtype(spec.base_model.dtype, device)
    full = result is not None and result.kind == "full"
    # A full fine-tune was saved whole (weights + tokenizer): load it instead of the base.
    model, tokenizer = load_base(
        result.adapter_dir if full else base,
        revision=None if full else load_revision(spec),
        dtype=dtype,
        trust_remote_code=spec.base_model.trust_remote_code,
        where=_full_fine_tune(result) if full else _base_source(spec),
    )
    if result is not None and not full:
        load_adapter(model, result.adapter_dir)
        if merge:
            merge_adapters(model)  # scoring runs many forwards: fold ΔW in once
    return model.to(device).eval(), tokenizer, device


@torch.no_grad()
def arm_deltas(
    spec: PipelineSpec, base: str, result: ArmResult
) -> dict[str, torch.Tensor | LowRankDelta]:
    """Module path -> fp32 ΔW of an arm, for ``tasks.analysis.spectra.analyse_deltas``.

    Adapter arms give the factors (B with scales folded in, A), never the dense out × in
    matrix; `full` gives the dense W_ft - W_0.
    """
    if result.kind != "full":
        model, _, _ = load_for_inference(spec, base, result, merge=False)
        return delta_factors(model)
    arm = next(a for a in spec.arms if a.name == result.arm)
    base_model, _, _ = load_for_inference(spec, base, None)
    with model_load_errors(result.adapter_dir, None, _full_fine_tune(result)):
        tuned = AutoModelForCausalLM.from_pretrained(result.adapter_dir, dtype=torch.float32)
    before, after = dict(base_model.named_modules()), dict(tuned.named_modules())
    return {
        path: after[path].weight.float().cpu() - before[path].weight.float().cpu()
        for path in matching_module_names(base_model, arm.target_modules)
    }


def _full_fine_tune(result: ArmResult) -> str:
    """Where a full fine-tune's weights come from, for load errors."""
    return f"the saved full fine-tune of arm {result.arm!r}"


def _base_source(spec: PipelineSpec) -> str:
    """Where the base model comes from, for load errors."""
    return (
        BASE_MODEL_FIELD
        if spec.base_model.tiny is None
        else "the tiny base model (spec base_model.tiny)"
    )
