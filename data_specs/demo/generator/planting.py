"""Planted rows: near copies, case copies, and where each planted row landed."""

from __future__ import annotations

import random

from rendering import jaccard

SWAPS = {
    "small": "little",
    "about": "around",
    "banks": "shores",
    "best": "mostly",
    "morning": "afternoon",
    "school": "class",
    "short": "brief",
    "friend": "neighbor",
    "many": "several",
    "quiet": "silent",
    "old": "ancient",
    "near": "beside",
    "workshop": "factory",
    "party": "picnic",
    "station": "platform",
    "new": "fresh",
}


def near_copy(rng: random.Random, row: dict, keys: list[str], text, low=0.8, high=0.95) -> tuple:
    """Swap words in `keys` fields until the 5-gram Jaccard with `row` lies in [low, high].

    A swap that would drop below `low` is skipped (it hit a word inside too many
    shingles); others accumulate until the score is at most `high`.
    """
    copy = dict(row)
    for _ in range(60):
        key = rng.choice(keys)
        tokens = copy[key].split(" ")
        spots = [i for i, t in enumerate(tokens) if t.strip(".,").isalpha() and len(t) > 3]
        i = rng.choice(spots)
        bare = tokens[i].strip(".,")
        tokens[i] = tokens[i].replace(bare, SWAPS.get(bare.lower(), bare[::-1].lower()), 1)
        trial = {**copy, key: " ".join(tokens)}
        if key == "input" and row.get("output") == row["input"].upper():  # keep it correct
            trial["output"] = trial["input"].upper()
        score = jaccard(text(row), text(trial))
        if score < low:
            continue
        copy = trial
        if score <= high:
            return copy, round(score, 3)
    raise RuntimeError("could not make a near duplicate in range; row too short?")


def case_copy(row, fields: list[str]):
    """The same content with case, spacing and punctuation changed (an exact dup once normalised)."""
    copy = dict(row) if isinstance(row, dict) else list(row)
    for f in fields:
        value = copy[f]
        value = value.replace(" ", "  ", 2).swapcase() if f != fields[-1] else value.upper()
        copy[f] = value.rstrip("?.") + " "
    return copy


class Planter:
    """Inserts planted rows into a source at seeded positions and records where they landed."""

    def __init__(self, rng: random.Random):
        self.rng, self.plans = rng, []

    def insert(self, rows: list, copy, of, kind: str, source: str, **extra) -> None:
        at = self.rng.randint(0, len(rows))
        rows.insert(at, copy)
        self.plans.append({"kind": kind, "source": source, "row_obj": copy, "of_obj": of, **extra})

    def resolve(self, files: dict[str, list]) -> list[dict]:
        """Turn object references into 1-based file rows, now that every insert is done."""

        def where(obj):
            for name, rows in files.items():
                for i, r in enumerate(rows):
                    if r is obj:
                        return name, i + 1
            raise KeyError("planted row not found")

        out = []
        for plan in self.plans:
            source, row = where(plan.pop("row_obj"))
            of_source, of_row = where(plan.pop("of_obj"))
            out.append(
                {**plan, "source": source, "row": row, "of": {"file": of_source, "row": of_row}}
            )
        return sorted(out, key=lambda p: (p["source"], p["row"]))
