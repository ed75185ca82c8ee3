"""MMLU-style knowledge items and BoolQ-style reading items over invented towns, people
and firms."""

from __future__ import annotations

import random

from rendering import pick_distractors
from settings import N_EVAL, N_TRAIN
from vocabulary import (
    ANIMALS,
    CLASSES,
    COUNTRIES,
    DISCOVERIES,
    ELEMENTS,
    FIELDS,
    FOUNDERS,
    GOODS,
    NAMES,
    ORDINALS,
    PLANETS,
    PRODUCTS,
    SYLLABLES,
    UNITS,
    WEEKDAYS,
)


def knowledge_items(rng: random.Random) -> tuple[list, list]:
    """MMLU-style rows: training asks facts one way, evaluation asks other facts or the reverse."""
    train, evals = [], []

    def mc(question: str, gold, pool) -> list:
        options = pick_distractors(rng, gold, pool) + [gold]
        rng.shuffle(options)
        return [question, *map(str, options), "ABCD"[options.index(gold)]]

    capitals, continents = [c[1] for c in COUNTRIES], sorted({c[2] for c in COUNTRIES})
    for country, capital, continent in COUNTRIES:
        train.append(mc(f"What is the capital of {country}?", capital, capitals))
        train.append(mc(f"On which continent is {country}?", continent, continents))
        evals.append(
            mc(
                f"{capital} is the capital city of which country?",
                country,
                [c[0] for c in COUNTRIES],
            )
        )
    for name, symbol, number in ELEMENTS:
        train.append(
            mc(f"What is the chemical symbol for {name}?", symbol, [e[1] for e in ELEMENTS])
        )
        train.append(mc(f"What is the atomic number of {name}?", number, [e[2] for e in ELEMENTS]))
        evals.append(
            mc(f"Which element has the chemical symbol {symbol}?", name, [e[0] for e in ELEMENTS])
        )
    for animal, group in ANIMALS:
        train.append(mc(f"What kind of animal is a {animal}?", group, CLASSES))
        evals.append(mc(f"To which group of animals does the {animal} belong?", group, CLASSES))
    for i, planet in enumerate(PLANETS):
        train.append(mc(f"Which planet is the {ORDINALS[i]} planet from the Sun?", planet, PLANETS))
    for small, big, factor in UNITS:
        train.append(mc(f"How many {small} are in one {big}?", factor, [u[2] for u in UNITS]))
    pairs = [(a, b) for a in range(2, 13) for b in range(a, 13)]
    rng.shuffle(pairs)
    for a, b in pairs[:70]:
        train.append(
            mc(f"What is {a} times {b}?", a * b, [a * b + d for d in (-a, a, -b, b, 1, -1, 2)])
        )
    for a, b in pairs[70:90]:
        evals.append(
            mc(
                f"Multiply {a} by {b}. The result is",
                a * b,
                [a * b + d for d in (-a, a, -b, b, 1, -1, 2)],
            )
        )
    sums = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(80)]
    for a, b in sums:
        train.append(mc(f"What is {a} plus {b}?", a + b, [a + b + d for d in (-10, 10, -1, 1, 2)]))
    rng.shuffle(train)
    rng.shuffle(evals)
    return train[:N_TRAIN], evals[: N_EVAL["knowledge"]]


def new_name(rng: random.Random, used: set) -> str:
    while True:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        if name not in used and len(name) > 3:
            used.add(name)
            return name


def boolq_item(rng: random.Random, used: set, idx: int) -> dict:
    """A short passage about an invented town, scientist or company, and a yes/no question on it."""
    kind = rng.choice(["town", "scientist", "company"])
    truth = rng.random() < 0.55  # BoolQ is about 62% yes; keep it near balanced
    if kind == "town":
        town, region, river = new_name(rng, used), new_name(rng, used), new_name(rng, used)
        year, pop = rng.randint(1200, 1900), rng.randint(800, 90000)
        founders, product = rng.choice(FOUNDERS), rng.choice(PRODUCTS)
        sentences = [
            rng.choice(
                [
                    f"{town} is a small town in the {region} region.",
                    f"The town of {town} lies in the {region} region.",
                ]
            ),
            rng.choice(
                [f"It lies on the {river} river.", f"The {river} river flows through {town}."]
            ),
            rng.choice(
                [f"About {pop:,} people live there.", f"Roughly {pop:,} people call it home."]
            ),
            rng.choice(
                [
                    f"It was founded in {year} by {founders}.",
                    f"{founders.capitalize()} founded {town} in {year}.",
                ]
            ),
            rng.choice(
                [
                    f"Today {town} is best known for its {product}.",
                    f"Visitors come for its {product}.",
                ]
            ),
            f"Its {rng.choice(WEEKDAYS)} market has {rng.randint(8, 300)} stalls.",
        ]
        other_founders = rng.choice([f for f in FOUNDERS if f != founders])
        other_product = rng.choice([p for p in PRODUCTS if p != product])
        question = rng.choice(
            [
                (
                    f"does the {river.lower()} river flow through {town.lower()}",
                    f"does the {new_name(rng, used).lower()} river flow through {town.lower()}",
                ),
                (
                    f"was {town.lower()} founded by {founders}",
                    f"was {town.lower()} founded by {other_founders}",
                ),
                (
                    f"is {town.lower()} known for its {product}",
                    f"is {town.lower()} known for its {other_product}",
                ),
                (
                    f"was {town.lower()} founded before {year + rng.randint(5, 80)}",
                    f"was {town.lower()} founded before {year - rng.randint(5, 80)}",
                ),
            ]
        )
    elif kind == "scientist":
        person = f"{rng.choice(NAMES)} {new_name(rng, used)}"
        uni, city = new_name(rng, used), new_name(rng, used)
        field, discovery = rng.choice(FIELDS), rng.choice(DISCOVERIES)
        born, prize = rng.randint(1800, 1980), new_name(rng, used)
        sentences = [
            f"{person} was a {field} who worked at the University of {uni}.",
            rng.choice(
                [
                    f"Born in {city} in {born}, {person.split()[0]} showed talent early.",
                    f"{person.split()[0]} grew up in {city} and was born in {born}.",
                ]
            ),
            rng.choice(
                [
                    f"{person} is best remembered for discovering {discovery}.",
                    f"The work that made {person.split()[1]} famous was finding {discovery}.",
                ]
            ),
            f"Later the {prize} Society gave {person.split()[1]} its highest medal.",
            f"{person.split()[0]} also taught {rng.randint(20, 400)} students over {rng.randint(5, 40)} years.",
        ]
        other_field = rng.choice([f for f in FIELDS if f != field])
        other_discovery = rng.choice([d for d in DISCOVERIES if d != discovery])
        lower = person.lower()
        question = rng.choice(
            [
                (f"was {lower} a {field}", f"was {lower} a {other_field}"),
                (f"did {lower} discover {discovery}", f"did {lower} discover {other_discovery}"),
                (
                    f"did {lower} work at the university of {uni.lower()}",
                    f"did {lower} work at the university of {new_name(rng, used).lower()}",
                ),
                (
                    f"was {lower} born in {city.lower()}",
                    f"was {lower} born in {new_name(rng, used).lower()}",
                ),
            ]
        )
    else:
        firm, city, chief = new_name(rng, used), new_name(rng, used), rng.choice(NAMES)
        goods, staff, year = rng.choice(GOODS), rng.randint(12, 9000), rng.randint(1850, 2015)
        sentences = [
            rng.choice(
                [
                    f"{firm} is a company based in {city}.",
                    f"The firm {firm} has its offices in {city}.",
                ]
            ),
            f"It makes {goods} for {rng.randint(3, 900)} shops.",
            rng.choice(
                [
                    f"It was started in {year} and now employs {staff:,} people.",
                    f"Since {year} it has grown to {staff:,} workers.",
                ]
            ),
            f"Its current chief executive is {chief} {new_name(rng, used)}.",
            f"Its best seller is the {new_name(rng, used)} {rng.randint(2, 99)}.",
        ]
        other_goods = rng.choice([g for g in GOODS if g != goods])
        question = rng.choice(
            [
                (f"does {firm.lower()} make {goods}", f"does {firm.lower()} make {other_goods}"),
                (
                    f"is {firm.lower()} based in {city.lower()}",
                    f"is {firm.lower()} based in {new_name(rng, used).lower()}",
                ),
                (
                    f"was {firm.lower()} started after {year - rng.randint(3, 60)}",
                    f"was {firm.lower()} started after {year + rng.randint(3, 60)}",
                ),
            ]
        )
    order = [0] + rng.sample(range(1, len(sentences)), len(sentences) - 1)
    passage = " ".join(sentences[i] for i in order)
    return {
        "question": question[0] if truth else question[1],
        "passage": passage,
        "idx": idx,
        "label": truth,
    }
