"""Learning-rate probes: one short run per candidate of an arm's grid, and the rule that picks
the winner (the lowest held-out loss on the mixture's validation split, never the suites)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from multilora_pipeline.data_specs.errors import TrainingError


@dataclass
class Probe:
    """One candidate of an arm's learning-rate grid and the held-out loss its probe reached."""

    learning_rate: float
    scale_learning_rate: float | None
    eval_loss: float | None
    run_id: str
    history: list[dict]
    chosen: bool = False

    @property
    def label(self) -> str:
        scale = "" if self.scale_learning_rate is None else f", scales {self.scale_learning_rate:g}"
        return f"lr {self.learning_rate:g}{scale}"


def best_probe(arm: str, probes: list[Probe]) -> Probe:
    """The probe with the lowest held-out loss (the first on a tie); a probe that diverged
    (no finite loss) never wins, and a grid where every probe diverged is an error."""
    finite = [p for p in probes if p.eval_loss is not None and math.isfinite(p.eval_loss)]
    if not finite:
        raise TrainingError(
            f"arm {arm!r}: every learning-rate probe ended without a finite held-out loss "
            f"({', '.join(p.label for p in probes)})",
            fix="try smaller learning rates in the grid",
        )
    return min(finite, key=lambda p: p.eval_loss)
