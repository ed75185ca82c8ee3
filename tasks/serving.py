"""The MLflow pyfunc model a registered version is: base model + adapter -> generated text.

`mlflow.pyfunc.load_model("models:/NAME@champion").predict(df)` takes a
DataFrame with a `prompt` column and returns one with a `completion` column.
The base model is either an artifact of the version (small local models such
as the demo's) or a hub id / path in the model config, loaded at
`load_context` time like any `from_pretrained` call.
"""

from __future__ import annotations

import mlflow
import pandas as pd


class AdapterGenerator(mlflow.pyfunc.PythonModel):
    """Greedy text generation with a MultiLoRA/LoRA adapter (merged at load) or a full fine-tune."""

    def load_context(self, context):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from models.multilora import load_adapter, merge_adapters

        config = context.model_config or {}
        artifacts = context.artifacts
        base = artifacts.get("base_model") or config["base_model"]
        kwargs = {"revision": config.get("revision"),
                  "trust_remote_code": bool(config.get("trust_remote_code", False))}
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

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        import torch

        max_new = int((params or {}).get("max_new_tokens", self.max_new_tokens))
        tok = self.tokenizer
        completions = []
        for prompt in model_input["prompt"].astype(str).tolist():
            ids = tok(prompt, return_tensors="pt").input_ids.to(self.device)
            if tok.bos_token_id is not None and (ids.shape[1] == 0 or ids[0, 0] != tok.bos_token_id):
                ids = torch.cat([torch.tensor([[tok.bos_token_id]], device=self.device), ids], 1)
            with torch.inference_mode():
                out = self.model.generate(
                    ids, max_new_tokens=max_new, do_sample=False,
                    pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                )
            completions.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return pd.DataFrame({"completion": completions})
