"""Fixtures shared by the evaluation tests: module-scoped tiny tokenizers."""

from __future__ import annotations

import pytest

from tests.tasks.scoring_models import make_tokenizer


@pytest.fixture(scope="module")
def bpe():
    return make_tokenizer(300)  # ~40 merges on top of the 256 bytes


@pytest.fixture(scope="module")
def chars():
    return make_tokenizer(259)  # bytes + 3 specials: exactly one token per ASCII character
