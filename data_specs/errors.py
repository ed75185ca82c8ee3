"""The project's one exception family.

Every message says what was wrong, where (file, row, field) and what to do, so
a person can fix the input without reading a traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        text = f"{where}: {what}" if where else what
        if fix:
            text += f" -- {fix}"
        super().__init__(text)


class SpecError(PipelineError):
    """The YAML spec is invalid (unknown key, wrong type, impossible value)."""


class DataError(PipelineError):
    """A source or evaluation file is unreadable or has a malformed row."""


class TrainingError(PipelineError):
    """Training cannot start or cannot continue (device, config, checkpoint)."""


class RegistryError(PipelineError):
    """A registered model, version or alias is missing or inconsistent."""
