"""The base every spec section derives from, and the shape of a name.

Its own file because every section module needs it and it needs none of them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAME_RE = r"^[a-z0-9][a-z0-9_\-]*$"


class Strict(BaseModel):
    """Base: unknown keys are errors, values are immutable once validated, and types are
    strict (no silent coercion: ``"128"`` is not an int and ``"yes"`` is not a bool)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True
    )
