"""The prompt format of a run: how every stage turns a prompt into the tokens the model sees.

Training, held-out loss, multiple-choice scoring, generation, the served MLflow model and
the PEFT export's notes all go through one `PromptFormat`, so the base model and every
arm are scored in the format the arms were trained in. A run has one format, chosen once
(the spec's `prompt_format`) and recorded with the run and each registered version:

- ``chat``: the prompt is the user turn of the tokenizer's chat template, followed by the
  assistant's generation prompt (instruct models such as SmolLM2-Instruct or Qwen-Instruct);
  the response is the assistant turn's own content (no leading space: `response`), and the
  model ends its turn with the tokenizer's eos. A suite's header (MMLU's "The following are
  multiple choice questions ...") is the system turn. This is lm-evaluation-harness's
  rendering under `--apply_chat_template`, which also drops the target delimiter before a
  choice, so a registered version scored by the harness with its standard flags gets the
  pipeline's numbers.
- ``plain``: the prompt text as the template rendered it (base models, the tiny demo model),
  the header in front of it, and the response as written (" yes": lm-eval's target
  delimiter is part of it).

Either way the token sequence starts with the tokenizer's bos token unless the rendered
text already does (chat templates such as SmolLM2's and Llama 3's open with it).

This module needs only the tokenizer (no torch, no project imports): the served model
(tasks/registry/pyfunc_model.py) is logged with `models/` as its code and imports it at load time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FORMATS = ("auto", "chat", "plain")
CHAT_RENDERING = 2
"""Bump when what a chat format puts in front of the model changes; a training run's key
records it (`run_identity`), so arms trained under an older rendering are trained again.
2: the response is the assistant turn's own content, without the leading space."""
# Written beside every adapter and PEFT export: how to prompt the model it was trained for.
FORMAT_FILE = "prompt_format.json"


def run_identity(requested: str) -> str:
    """What a training run's key records of its prompt format: the spec's request, and the
    chat rendering's version wherever it may resolve to a chat (plain keys never move)."""
    return requested if requested == "plain" else f"{requested}/chat-rendering-{CHAT_RENDERING}"


class PromptFormatError(ValueError):
    """`chat` was asked for but the tokenizer has no chat template."""


@dataclass(frozen=True)
class PromptFormat:
    """One run's prompt format, bound to its tokenizer."""

    tokenizer: object
    kind: Literal["chat", "plain"]

    @classmethod
    def resolve(cls, tokenizer, requested: str = "auto") -> PromptFormat:
        """`auto` is `chat` when the tokenizer has a chat template, else `plain`."""
        if requested not in FORMATS:
            raise PromptFormatError(f"unknown prompt format {requested!r} (use one of {FORMATS})")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if requested == "chat" and not has_template:
            raise PromptFormatError(
                "prompt_format is 'chat' but the tokenizer has no chat template"
            )
        kind = "chat" if requested == "chat" or (requested == "auto" and has_template) else "plain"
        return cls(tokenizer, kind)

    @property
    def template_sha(self) -> str | None:
        """Short hash of the chat template text (None for plain): two runs with the same
        format name but different templates are told apart by it."""
        if self.kind != "chat":
            return None
        return hashlib.sha256(self.tokenizer.chat_template.encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One line for logs and summaries."""
        if self.kind == "chat":
            return f"chat template of the tokenizer (sha {self.template_sha})"
        return "plain text (no chat template)"

    def as_tags(self) -> dict[str, str]:
        """What MLflow runs and versions record of the format."""
        tags = {"mlora.prompt_format": self.kind}
        if self.template_sha:
            tags["mlora.chat_template_sha"] = self.template_sha
        return tags

    def write(self, directory: str | Path) -> Path:
        """`prompt_format.json` in `directory`: the format, and how to ask lm-eval for it."""
        path = Path(directory) / FORMAT_FILE
        note = (
            "prompts are the user turn of the base tokenizer's chat template; "
            "run lm_eval with --apply_chat_template"
            if self.kind == "chat"
            else "prompts are plain text; run lm_eval without --apply_chat_template"
        )
        record = {"prompt_format": self.kind, "chat_template_sha": self.template_sha, "note": note}
        path.write_text(json.dumps(record, indent=2) + "\n")
        return path

    def render(self, prompts: Sequence[str], systems: Sequence[str] | None = None) -> list[str]:
        """The prompt texts the model sees: the chat turn and generation prompt, or as is.

        `systems` (one per prompt, "" for none) is a header: the system turn of a chat (as
        lm-eval puts a task's description), or the text in front of a plain prompt."""
        systems = systems or [""] * len(prompts)
        if self.kind == "plain":
            return [s + p for s, p in zip(systems, prompts, strict=True)]
        return [
            self.tokenizer.apply_chat_template(
                [{"role": "system", "content": s}] * bool(s) + [{"role": "user", "content": p}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for s, p in zip(systems, prompts, strict=True)
        ]

    def response(self, text: str) -> str:
        """A response as the model is taught to give it after its rendered prompt: as written
        in plain text; in a chat, the assistant turn's content without leading whitespace."""
        return text.lstrip() if self.kind == "chat" else text

    def delimiter(self, target_delimiter: str) -> str:
        """What goes between a rendered context and a scored choice: the suite's target
        delimiter in plain text, nothing in a chat (the choice is the turn's first text,
        as `response` trains it and lm-eval scores it under --apply_chat_template)."""
        return "" if self.kind == "chat" else target_delimiter

    def prefix(self, rendered: str) -> list[int]:
        """bos, unless there is none or the rendered text already opens with it."""
        bos_id, bos_text = self.tokenizer.bos_token_id, self.tokenizer.bos_token
        if bos_id is None or (bos_text and rendered.startswith(bos_text)):
            return []
        return [bos_id]

    def encode(
        self, prompts: Sequence[str], systems: Sequence[str] | None = None
    ) -> list[list[int]]:
        """Token ids of each prompt as the model sees it: prefix + rendered prompt."""
        rendered = self.render(prompts, systems)
        if not rendered:
            return []
        ids = self.tokenizer(rendered, add_special_tokens=False, verbose=False)["input_ids"]
        return [self.prefix(text) + row for text, row in zip(rendered, ids, strict=True)]

    def end_ids(self) -> list[int]:
        """What training appends after a response (the tokenizer's eos), so what ends a turn."""
        eos = self.tokenizer.eos_token_id
        return [eos] if eos is not None else []

    def stop_ids(self, generation_config=None) -> set[int]:
        """Token ids that end a generated answer: the tokenizer's eos (which training teaches
        the model to emit) and the model's generation_config eos ids (Llama 3 lists several)."""
        stops = set(self.end_ids())
        extra = getattr(generation_config, "eos_token_id", None)
        if isinstance(extra, int):
            stops.add(extra)
        elif extra:
            stops.update(int(i) for i in extra)
        return stops
