"""The MLflow pyfunc model a registered version is: base model + adapter -> generated text.

    mlflow.pyfunc.load_model("models:/mlora-demo@champion").predict(
        pd.DataFrame({"prompt": ["### Instruction:\\nAdd 2 and 3.\\n\\n### Response:\\n"]}))

takes a DataFrame with a `prompt` column and returns one with a `completion`
column (greedy decoding; `params={"max_new_tokens": N}` overrides the version's
budget, 0 keeps it; generation also stops at the model's context length). Each
prompt is encoded in the prompt format the adapter was trained in (the version's
`prompt_format`, through models/prompt_format.py as in training and scoring), and
the answer ends at the tokenizer's eos (`<|im_end|>` for a ChatML model).

This file is logged as "model code" (MLflow's models-from-code): the version
stores this source, not a pickled object, so loading it never unpickles
anything and needs only `models/` (logged as code) plus torch and
transformers. The base model is either an artifact of the version (small
local models such as the demo's) or a hub id / path in the model config,
loaded at `load_context` time like any `from_pretrained` call.
"""

from __future__ import annotations

import mlflow
import pandas as pd


class AdapterGenerator(mlflow.pyfunc.PythonModel):
    """Greedy text generation with a MultiLoRA/LoRA adapter (merged at load) or a full fine-tune."""

    def load_context(self, context):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from multilora_pipeline.models.multilora import load_adapter, merge_adapters
        from multilora_pipeline.models.prompt_format import PromptFormat

        config = context.model_config or {}
        artifacts = context.artifacts
        base = artifacts.get("base_model") or config.get("base_model")
        if not base:
            raise ValueError(
                "this version has neither a base_model artifact nor a base_model in its "
                "model config; re-register it with the base model id or folder"
            )
        kwargs = {
            "revision": config.get("revision"),
            "trust_remote_code": bool(config.get("trust_remote_code", False)),
        }
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        if config.get("kind") == "full":
            self.model = AutoModelForCausalLM.from_pretrained(artifacts["adapter"], dtype=dtype)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, **kwargs)
            load_adapter(self.model, artifacts["adapter"])
            merge_adapters(self.model)  # serving needs no separate adapter path: zero extra latency
        self.tokenizer = AutoTokenizer.from_pretrained(base, **kwargs)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()
        self.max_new_tokens = int(config.get("max_new_tokens", 64))
        # Prompts are encoded the way training encoded them: the same PromptFormat code.
        self.format = PromptFormat.resolve(self.tokenizer, config.get("prompt_format", "plain"))
        generation = getattr(self.model, "generation_config", None)
        self.stop_ids = sorted(self.format.stop_ids(generation))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        """One greedy completion per row of `model_input["prompt"]`."""
        import torch

        max_new = int((params or {}).get("max_new_tokens") or self.max_new_tokens)
        context_length = getattr(self.model.config, "max_position_embeddings", None)
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        completions = []
        for encoded in self.format.encode(model_input["prompt"].astype(str).tolist()):
            if not encoded:  # an empty plain prompt without bos: condition on eos
                encoded = [pad_id]
            ids = torch.tensor([encoded], device=self.device)
            budget = max_new if not context_length else min(max_new, context_length - ids.shape[1])
            if budget <= 0:
                completions.append("")  # the prompt alone fills the context
                continue
            with torch.inference_mode():
                out = self.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=budget,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=self.stop_ids or None,
                )
            completions.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        return pd.DataFrame({"completion": completions})


# Models-from-code: MLflow executes this file at load time and serves this object.
mlflow.models.set_model(AdapterGenerator())
