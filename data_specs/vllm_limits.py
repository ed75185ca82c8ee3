"""What serving a spec's adapters elsewhere will ask for, said when the spec loads.

vLLM serves LoRA adapters up to `--max-lora-rank`, which takes one of VLLM_LORA_RANKS and
defaults to 16 (vllm/config/lora.py); an adapter is refused only when its rank is above
it ("LoRA rank 32 is greater than max_lora_rank 16"), so a rank that is not itself one of
those values (12, say) is served under the next one up. A MultiLoRA arm exports as one PEFT
LoRA of rank n_modules x rank (models/multilora/export.py), so its served rank is that
product, and only a product above 16 needs the flag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multilora_pipeline.data_specs.schema import PipelineSpec

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16


def exported_rank(kind: str, n_modules: int, rank: int) -> int | None:
    """The rank of the arm's PEFT export (None for a full fine-tune: no adapter)."""
    if kind == "full":
        return None
    return rank if kind == "lora" else n_modules * rank


def vllm_notes(spec: PipelineSpec) -> list[str]:
    """One line per arm whose export vLLM does not serve with its defaults, with the flag."""
    notes = []
    for i, arm in enumerate(spec.arms):
        served = exported_rank(arm.kind, arm.n_modules, arm.rank)
        if served is None or served <= VLLM_DEFAULT_MAX_LORA_RANK:
            continue
        fits = [r for r in VLLM_LORA_RANKS if r >= served]
        if not fits:
            notes.append(
                f"arms[{i}] ({arm.name}): its PEFT export has rank {served}, above the "
                f"largest rank vLLM serves ({VLLM_LORA_RANKS[-1]}): serve it with "
                "transformers/PEFT, or lower rank"
            )
            continue
        notes.append(
            f"arms[{i}] ({arm.name}): its PEFT export has rank {served}, above vLLM's "
            f"default --max-lora-rank {VLLM_DEFAULT_MAX_LORA_RANK}: serve it with "
            f"`vllm serve ... --enable-lora --max-lora-rank {fits[0]}`"
        )
    return notes
