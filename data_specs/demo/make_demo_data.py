"""Write the bundled demo data (deterministic: same seed, same bytes).

    .venv/bin/python data_specs/demo/make_demo_data.py     # rewrites the files next to it

Four training sources in the formats real datasets use, three evaluation
files, and PLANTED.json: the rows planted for dedup and decontamination to
find. Row numbers there are file rows as fetch counts them (jsonl: line,
json: element, headerless csv: record), all 1-based.

- instructions.json  Alpaca JSON list (instruction / input / output)
- boolq_train.jsonl  SuperGLUE BoolQ (question / passage / idx / label as bool),
                     reading comprehension over invented towns, people and firms
- knowledge_train.csv  MMLU CSV without header (question, A, B, C, D, answer)
- math_train.jsonl   GSM8K (question / answer with <<calc>> steps and "#### N")
- knowledge_eval.csv, boolq_eval.jsonl, math_eval.jsonl: the evaluation suites

Planted: exact duplicates, duplicates differing only in case/spacing/punctuation,
near duplicates (word 5-gram Jaccard 0.80-0.95 on prompt + response) within a
source and across sources (instruction rows that restate math rows), and
training rows that copy evaluation items. `check()` verifies that nothing
else overlaps, so the planted list is the whole truth.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 1234
N_TRAIN = 300  # rows per training source before planting: a few hundred, as the spec asks
N_EVAL = {"knowledge": 80, "boolq": 80, "math": 40}  # math eval is generation: slower to score
NGRAM = 13  # decontamination n-gram (GPT-3 / lm-eval convention)
SHINGLE = 5  # near-dedup word shingle
BOILERPLATE = 0.1  # n-grams in more than this share of eval items are template, not content

# ---------------------------------------------------------------- facts

COUNTRIES = [
    ("France", "Paris", "Europe"),
    ("Spain", "Madrid", "Europe"),
    ("Italy", "Rome", "Europe"),
    ("Germany", "Berlin", "Europe"),
    ("Norway", "Oslo", "Europe"),
    ("Sweden", "Stockholm", "Europe"),
    ("Poland", "Warsaw", "Europe"),
    ("Greece", "Athens", "Europe"),
    ("Portugal", "Lisbon", "Europe"),
    ("Austria", "Vienna", "Europe"),
    ("Ireland", "Dublin", "Europe"),
    ("Finland", "Helsinki", "Europe"),
    ("Hungary", "Budapest", "Europe"),
    ("Denmark", "Copenhagen", "Europe"),
    ("Japan", "Tokyo", "Asia"),
    ("China", "Beijing", "Asia"),
    ("India", "New Delhi", "Asia"),
    ("Thailand", "Bangkok", "Asia"),
    ("Vietnam", "Hanoi", "Asia"),
    ("Nepal", "Kathmandu", "Asia"),
    ("Indonesia", "Jakarta", "Asia"),
    ("Mongolia", "Ulaanbaatar", "Asia"),
    ("Kenya", "Nairobi", "Africa"),
    ("Egypt", "Cairo", "Africa"),
    ("Ghana", "Accra", "Africa"),
    ("Morocco", "Rabat", "Africa"),
    ("Ethiopia", "Addis Ababa", "Africa"),
    ("Senegal", "Dakar", "Africa"),
    ("Peru", "Lima", "South America"),
    ("Chile", "Santiago", "South America"),
    ("Argentina", "Buenos Aires", "South America"),
    ("Colombia", "Bogota", "South America"),
    ("Ecuador", "Quito", "South America"),
    ("Canada", "Ottawa", "North America"),
    ("Mexico", "Mexico City", "North America"),
    ("Cuba", "Havana", "North America"),
    ("Australia", "Canberra", "Oceania"),
    ("New Zealand", "Wellington", "Oceania"),
    ("Fiji", "Suva", "Oceania"),
]
ELEMENTS = [
    ("hydrogen", "H", 1),
    ("helium", "He", 2),
    ("lithium", "Li", 3),
    ("carbon", "C", 6),
    ("nitrogen", "N", 7),
    ("oxygen", "O", 8),
    ("fluorine", "F", 9),
    ("neon", "Ne", 10),
    ("sodium", "Na", 11),
    ("magnesium", "Mg", 12),
    ("aluminium", "Al", 13),
    ("silicon", "Si", 14),
    ("phosphorus", "P", 15),
    ("sulfur", "S", 16),
    ("chlorine", "Cl", 17),
    ("argon", "Ar", 18),
    ("potassium", "K", 19),
    ("calcium", "Ca", 20),
    ("iron", "Fe", 26),
    ("copper", "Cu", 29),
    ("zinc", "Zn", 30),
    ("silver", "Ag", 47),
    ("tin", "Sn", 50),
    ("iodine", "I", 53),
    ("gold", "Au", 79),
    ("mercury", "Hg", 80),
    ("lead", "Pb", 82),
    ("uranium", "U", 92),
]
ANIMALS = [
    ("whale", "mammal"),
    ("bat", "mammal"),
    ("dolphin", "mammal"),
    ("horse", "mammal"),
    ("tiger", "mammal"),
    ("penguin", "bird"),
    ("eagle", "bird"),
    ("owl", "bird"),
    ("ostrich", "bird"),
    ("crocodile", "reptile"),
    ("turtle", "reptile"),
    ("lizard", "reptile"),
    ("cobra", "reptile"),
    ("shark", "fish"),
    ("salmon", "fish"),
    ("trout", "fish"),
    ("frog", "amphibian"),
    ("toad", "amphibian"),
    ("salamander", "amphibian"),
    ("ant", "insect"),
    ("bee", "insect"),
    ("beetle", "insect"),
    ("butterfly", "insect"),
]
CLASSES = sorted({c for _, c in ANIMALS})
PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
UNITS = [
    ("centimeters", "meter", 100),
    ("meters", "kilometer", 1000),
    ("minutes", "hour", 60),
    ("seconds", "minute", 60),
    ("hours", "day", 24),
    ("days", "week", 7),
    ("months", "year", 12),
    ("grams", "kilogram", 1000),
    ("milliliters", "liter", 1000),
    ("millimeters", "centimeter", 10),
    ("eggs", "dozen", 12),
    ("years", "century", 100),
]

NAMES = [
    "Ava",
    "Ben",
    "Chloe",
    "Dev",
    "Elena",
    "Farid",
    "Grace",
    "Hugo",
    "Iris",
    "Jamal",
    "Kira",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
    "Uma",
    "Victor",
    "Wen",
    "Xavier",
    "Yara",
    "Zane",
]
PRONOUN = {
    n: (
        "She"
        if n
        in {
            "Ava",
            "Chloe",
            "Elena",
            "Grace",
            "Iris",
            "Kira",
            "Maya",
            "Olga",
            "Rosa",
            "Tara",
            "Uma",
            "Wen",
            "Yara",
        }
        else "He"
    )
    for n in NAMES
}
ITEMS = [
    "apples",
    "marbles",
    "stickers",
    "pencils",
    "oranges",
    "stamps",
    "cards",
    "shells",
    "books",
]
PLACES = ["market", "corner shop", "school fair", "bookstore", "farm stand", "mall"]
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ra",
    "ven",
    "dor",
    "sel",
    "tha",
    "bri",
    "mor",
    "el",
    "an",
    "qu",
    "ri",
    "sa",
    "to",
    "na",
    "vel",
    "gar",
    "lin",
    "bo",
    "ze",
    "fen",
    "wy",
    "ost",
    "pa",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PRODUCTS = [
    "cheese",
    "pottery",
    "glass bells",
    "wool blankets",
    "apple cider",
    "wooden toys",
    "silver jewelry",
    "honey",
    "paper lanterns",
    "leather boots",
    "olive oil",
    "clocks",
]
FOUNDERS = ["wool merchants", "fishermen", "monks", "miners", "farmers", "soldiers", "traders"]
FIELDS = ["chemist", "botanist", "astronomer", "geologist", "physicist", "mathematician"]
DISCOVERIES = [
    "a new kind of moss",
    "a comet",
    "a rare mineral",
    "a faster sorting method",
    "a cold-resistant wheat",
    "a moon of a distant planet",
    "a glowing bacterium",
    "an early vaccine",
    "a deep sea current",
    "a new prime number pattern",
]
GOODS = [
    "bicycles",
    "umbrellas",
    "garden tools",
    "board games",
    "kitchen knives",
    "telescopes",
    "rain boots",
    "desk lamps",
    "sailboats",
    "pianos",
    "tea kettles",
]
ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ADJECTIVES = [
    "quiet",
    "old",
    "bright",
    "tiny",
    "patient",
    "curious",
    "green",
    "heavy",
    "brave",
    "sleepy",
    "clever",
    "noisy",
    "gentle",
    "tall",
    "rusty",
    "golden",
]
NOUNS = [
    "cat",
    "farmer",
    "river",
    "teacher",
    "robot",
    "garden",
    "painter",
    "train",
    "child",
    "lamp",
    "sailor",
    "baker",
    "bridge",
    "fox",
    "pilot",
    "village",
]
VERBS = [
    "watches",
    "follows",
    "paints",
    "carries",
    "visits",
    "finds",
    "builds",
    "crosses",
    "cleans",
    "remembers",
    "greets",
    "repairs",
    "counts",
    "draws",
]
LOCATIONS = [
    "the old mill",
    "the harbor",
    "the library",
    "the hill",
    "the station",
    "the market",
    "the school",
    "the forest",
    "the lake",
    "the tower",
    "the bakery",
    "the museum",
]


# ---------------------------------------------------------------- small helpers


def words(text: str) -> list[str]:
    """Lower-cased word tokens, punctuation dropped: the unit every overlap check uses."""
    return re.findall(r"[a-z0-9]+", text.lower())


def shingles(text: str, n: int = SHINGLE) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def number_words(n: int) -> str:
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


def pick_distractors(rng: random.Random, gold, pool, k: int = 3) -> list:
    options = [x for x in dict.fromkeys(pool) if x != gold]
    return rng.sample(options, k)


# Renderings of the canonical prompt + response (tasks/data/templates.py formats), used only to
# measure overlaps here; data_specs must not import tasks/, so they are restated.
def text_alpaca(row: dict) -> str:
    block = f"\n\n### Input:\n{row['input']}" if row["input"].strip() else ""
    return f"### Instruction:\n{row['instruction']}{block}\n\n### Response:\n{row['output']}"


def text_boolq(row: dict) -> str:
    return (
        f"{row['passage']}\nQuestion: {row['question']}?\nAnswer: {'yes' if row['label'] else 'no'}"
    )


def text_mmlu(row: list) -> str:
    q, a, b, c, d, ans = row
    return f"{q}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer: {ans}"


def text_gsm8k(row: dict) -> str:
    return f"Question: {row['question']}\nAnswer: {row['answer']}"


def prompt_only(source: str, row) -> str:
    """The evaluation prompt (no gold answer), the text decontamination compares against."""
    if source == "knowledge":
        return text_mmlu(row).rsplit(" ", 1)[0]
    if source == "boolq":
        return text_boolq(row).rsplit(" ", 1)[0]
    return f"Question: {row['question']}\nAnswer:"


TEXT = {
    "instructions": text_alpaca,
    "boolq": text_boolq,
    "knowledge": text_mmlu,
    "math": text_gsm8k,
}


# ---------------------------------------------------------------- generators


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


def math_item(rng: random.Random) -> dict:
    """A GSM8K-style word problem with a computed answer and <<calc>> annotations.

    Every few words is a slot (name, number, item, place, day) so that two
    problems from one template share no long n-gram by accident.
    """
    name = rng.choice(NAMES)
    he = PRONOUN[name]
    day, other_day = rng.sample(WEEKDAYS, 2)
    kind = rng.randrange(6)
    if kind == 0:
        item, place = rng.choice(ITEMS), rng.choice(PLACES)
        a, b = rng.randint(5, 60), rng.randint(3, 40)
        c = rng.randint(1, a + b - 1)
        friend = rng.choice([n for n in NAMES if n != name])
        s, r = a + b, a + b - c
        q = (
            f"{name} has {a} {item} at home. On {day} {he.lower()} buys {b} more {item} at the "
            f"{place}. Later {he.lower()} gives {c} of the {item} to {friend}. How many {item} "
            f"does {name} have now?"
        )
        steps = [
            f"{name} starts with {a} {item}.",
            f"After buying {b} more, {name} has {a} + {b} = <<{a}+{b}={s}>>{s} {item}.",
            f"After giving {c} to {friend}, {name} has {s} - {c} = <<{s}-{c}={r}>>{r} {item}.",
        ]
    elif kind == 1:
        item, place = rng.choice(ITEMS), rng.choice(PLACES)
        qty, price = rng.randint(2, 9), rng.randint(2, 12)
        purpose = rng.choice(["a school project", "a birthday gift", "the club", "a game night"])
        cost = qty * price
        bill = next(b for b in (20, 50, 100, 200) if b > cost)
        r = bill - cost
        q = (
            f"At the {place}, {item} cost ${price} each. {name} buys {qty} {item} for {purpose} "
            f"and pays with a ${bill} bill. How many dollars of change does {name} get after "
            f"paying for the {qty} {item}?"
        )
        steps = [
            f"The {item} cost {qty} * ${price} = $<<{qty}*{price}={cost}>>{cost}.",
            f"The change is ${bill} - ${cost} = $<<{bill}-{cost}={r}>>{r}.",
        ]
    elif kind == 2:
        rate, h1, h2 = rng.randint(4, 40), rng.randint(2, 9), rng.randint(2, 9)
        goods = rng.choice(GOODS)
        t, r = h1 + h2, rate * (h1 + h2)
        q = (
            f"A workshop run by {name} makes {rate} {goods} every hour. On {day} it runs for "
            f"{h1} hours, and on {other_day} it runs for {h2} hours. How many {goods} does "
            f"{name} make on {day} and {other_day} together?"
        )
        steps = [
            f"The workshop runs {h1} + {h2} = <<{h1}+{h2}={t}>>{t} hours in total.",
            f"It makes {t} * {rate} = <<{t}*{rate}={r}>>{r} {goods}.",
        ]
    elif kind == 3:
        k, m = rng.randint(2, 12), rng.randint(3, 20)
        e = rng.randint(1, m - 1)
        treat = rng.choice(["cookies", "muffins", "cupcakes", "brownies", "pretzels"])
        event = rng.choice(["a party", "a picnic", "a class trip", "a birthday", "a concert"])
        total, r = k * m, m - e
        q = (
            f"{name} baked {total} {treat} for {event} and shared them equally among {k} "
            f"friends. On {day} each friend ate {e} {treat} at {rng.choice(LOCATIONS)}. "
            f"How many {treat} does each friend of {name} have left?"
        )
        steps = [
            f"Each friend gets {total} / {k} = <<{total}/{k}={m}>>{m} {treat}.",
            f"After eating {e}, each friend has {m} - {e} = <<{m}-{e}={r}>>{r} {treat} left.",
        ]
    elif kind == 4:
        save, weeks = rng.randint(3, 25), rng.randint(4, 20)
        saved = save * weeks
        spend = rng.randint(1, saved - 1)
        thing = rng.choice(["bicycle helmet", "board game", "jacket", "pair of shoes", "lamp"])
        box = rng.choice(["piggy bank", "glass jar", "savings box", "tin can"])
        r = saved - spend
        q = (
            f"{name} puts ${save} into a {box} every week. After {weeks} weeks {he.lower()} "
            f"spends ${spend} on a new {thing}. How many dollars does {name} have left in the {box}?"
        )
        steps = [
            f"{name} saves {save} * {weeks} = $<<{save}*{weeks}={saved}>>{saved}.",
            f"After buying the {thing}, ${saved} - ${spend} = $<<{saved}-{spend}={r}>>{r} is left.",
        ]
    else:
        speed, hours, extra = rng.randint(30, 120), rng.randint(2, 6), rng.randint(10, 90)
        town = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
        first, r = speed * hours, speed * hours + extra
        q = (
            f"A train with {name} on board travels at {speed} kilometers per hour for {hours} "
            f"hours. After a stop in {town} it travels another {extra} kilometers. How many "
            f"kilometers does {name} travel in total?"
        )
        steps = [
            f"First it travels {speed} * {hours} = <<{speed}*{hours}={first}>>{first} kilometers.",
            f"In total it travels {first} + {extra} = <<{first}+{extra}={r}>>{r} kilometers.",
        ]
    return {"question": q, "answer": "\n".join(steps) + f"\n#### {r}"}


def instruction_item(rng: random.Random) -> dict:
    """An Alpaca-style instruction with a programmatically correct output."""

    def sentence() -> str:
        return (
            f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the "
            f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} near {rng.choice(LOCATIONS)}."
        )

    kind = rng.randrange(10)
    if kind == 0:
        s = sentence()
        return {
            "instruction": "Rewrite the following sentence in uppercase.",
            "input": s,
            "output": s.upper(),
        }
    if kind == 1:
        s = sentence()
        return {
            "instruction": "Reverse the order of the words in the sentence.",
            "input": s,
            "output": " ".join(reversed(s.rstrip(".").split())) + ".",
        }
    if kind == 2:
        s = sentence()
        return {
            "instruction": "Count the words in the sentence.",
            "input": s,
            "output": f"The sentence has {len(s.split())} words.",
        }
    if kind == 3:
        n = rng.randint(3, 12)
        return {
            "instruction": f"List the first {n} even numbers.",
            "input": "",
            "output": ", ".join(str(2 * i) for i in range(1, n + 1)),
        }
    if kind == 4:
        n, k = rng.randint(3, 10), rng.randint(3, 9)
        return {
            "instruction": f"List the first {n} multiples of {k}.",
            "input": "",
            "output": ", ".join(str(k * i) for i in range(1, n + 1)),
        }
    if kind == 5:
        n = rng.randint(0, 999)
        return {
            "instruction": "Translate the number to words.",
            "input": str(n),
            "output": number_words(n),
        }
    if kind == 6:
        nums = rng.sample(range(1, 100), rng.randint(4, 8))
        return {
            "instruction": "Sort the numbers in ascending order.",
            "input": ", ".join(map(str, nums)),
            "output": ", ".join(map(str, sorted(nums))),
        }
    if kind == 7:
        country, capital, _ = rng.choice(COUNTRIES)
        return {
            "instruction": f"Name the capital of {country}.",
            "input": "",
            "output": f"The capital of {country} is {capital}.",
        }
    if kind == 8:
        name, symbol, number = rng.choice(ELEMENTS)
        return {
            "instruction": f"Describe the element {name} in one sentence.",
            "input": "",
            "output": f"{name.capitalize()} has the chemical symbol {symbol} and the atomic "
            f"number {number}.",
        }
    a, b = rng.randint(10, 500), rng.randint(10, 500)
    return {"instruction": "Add the two numbers.", "input": f"{a} and {b}", "output": str(a + b)}


def paragraph_item(rng: random.Random) -> dict:
    """A longer instruction row (a paragraph to uppercase): long enough for near-duplicates."""
    text = " ".join(
        f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the "
        f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} near {rng.choice(LOCATIONS)}."
        for _ in range(6)
    )
    return {
        "instruction": "Rewrite the following paragraph in uppercase.",
        "input": text,
        "output": text.upper(),
    }


def unique(rng: random.Random, make, n: int, text, key=None, seen: set | None = None) -> list:
    """n items from `make` whose key (default: normalised text) is new: no accidental duplicates."""
    seen, out = set(seen or ()), []
    while len(out) < n:
        item = make(rng)
        key_of = key(item) if key else " ".join(words(text(item)))
        if key_of in seen:
            continue
        seen.add(key_of)
        out.append(item)
    return out


def eval_grams(source: str, items: list) -> set:
    """The 13-grams of evaluation prompts, without boilerplate (in > BOILERPLATE of items)."""
    owners: dict = defaultdict(set)
    for j, item in enumerate(items):
        w = words(prompt_only(source, item))
        for i in range(len(w) - NGRAM + 1):
            owners[tuple(w[i : i + NGRAM])].add(j)
    return {g for g, js in owners.items() if len(js) <= BOILERPLATE * len(items)}


def pipeline_words(text: str) -> list[str]:
    """Words as tasks/data/minhash.py normalises them: punctuation is deleted inside a token, so
    a GSM8K annotation like ``<<27/9=3>>3`` is one word (27933), not four."""
    return [w for w in (re.sub(r"[^\w\s]|_", "", t) for t in text.lower().split()) if w]


def answer_grams(source: str, items: list) -> dict:
    """13-gram -> eval rows (1-based) for the gold answers, boilerplate removed. The pipeline
    matches training rows against an eval item's full text (prompt and answer, as GPT-3 /
    lm-eval do); templated math rationales with the same numbers share answer 13-grams."""
    owners: dict = defaultdict(set)
    for j, item in enumerate(items):
        w = pipeline_words(TEXT[source](item)[len(prompt_only(source, item)) :])
        for i in range(len(w) - NGRAM + 1):
            owners[tuple(w[i : i + NGRAM])].add(j + 1)
    return {g: js for g, js in owners.items() if len(js) <= BOILERPLATE * len(items)}


def shares_ngram(text: str, grams: set) -> bool:
    w = words(text)
    return any(tuple(w[i : i + NGRAM]) in grams for i in range(len(w) - NGRAM + 1))


def numbers_of(item: dict) -> str:
    """Math problems that differ only in a name are near duplicates: key them by their numbers."""
    return " ".join(re.findall(r"\d+", item["question"]))


# ---------------------------------------------------------------- planting


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


def build() -> tuple[dict[str, list], list[dict]]:
    rng = random.Random(SEED)
    used_names: set = set()
    know_train, know_eval = knowledge_items(rng)
    # Evaluation items first; training rows that share a 13-gram with them are redrawn,
    # so the only contamination is what gets planted below.
    boolq_eval = [boolq_item(rng, used_names, i) for i in range(N_EVAL["boolq"])]
    math_eval = unique(rng, math_item, N_EVAL["math"], text_gsm8k, key=numbers_of)
    boolq_grams, math_grams = eval_grams("boolq", boolq_eval), eval_grams("math", math_eval)
    boolq_train = []
    while len(boolq_train) < N_TRAIN:
        row = boolq_item(rng, used_names, len(boolq_train))
        if not shares_ngram(text_boolq(row), boolq_grams):
            boolq_train.append(row)
    seen = {numbers_of(r) for r in math_eval}
    math_train = unique(
        rng,
        math_item,
        N_TRAIN,
        text_gsm8k,
        key=lambda r: "*" if shares_ngram(text_gsm8k(r), math_grams) else numbers_of(r),
        seen=seen | {"*"},
    )
    instructions = unique(rng, instruction_item, N_TRAIN - 20, text_alpaca)
    instructions += unique(rng, paragraph_item, 20, text_alpaca)
    rng.shuffle(instructions)
    files = {
        "instructions": instructions,
        "boolq": boolq_train,
        "knowledge": know_train,
        "math": math_train,
        "knowledge_eval": know_eval,
        "boolq_eval": boolq_eval,
        "math_eval": math_eval,
    }
    plant = Planter(rng)
    originals = {k: list(v) for k, v in files.items()}  # choose sources among the unplanted rows

    def some(name: str, k: int, where=None) -> list:
        pool = [r for r in originals[name] if where is None or where(r)]
        return rng.sample(pool, k)

    # exact duplicates within a source (the same row twice)
    for name in ("instructions", "boolq", "knowledge", "math"):
        for row in some(name, 3):
            plant.insert(
                files[name], row.copy() if isinstance(row, dict) else list(row), row, "exact", name
            )
    # duplicates that differ only in case, spacing or punctuation
    for name, fields in (
        ("instructions", ["instruction", "output"]),
        ("boolq", ["question"]),
        ("knowledge", [0]),
        ("math", ["question"]),
    ):
        for row in some(name, 2):
            plant.insert(files[name], case_copy(row, fields), row, "normalised", name)
    # near duplicates within a source
    long_rows = {
        "instructions": (
            lambda r: r["instruction"].startswith("Rewrite the following paragraph"),
            ["input"],
        ),
        "boolq": (None, ["passage"]),
        "math": (None, ["question"]),
    }
    for name, (where, keys) in long_rows.items():
        for row in some(name, 3, where):
            copy, score = near_copy(rng, row, keys, TEXT[name])
            plant.insert(files[name], copy, row, "near", name, jaccard=score)

    # near duplicates across sources: an instruction row restating a math row
    def restated(row: dict) -> dict:
        return {"instruction": row["question"], "input": "", "output": row["answer"]}

    def cross_score(row: dict) -> float:
        return round(jaccard(text_alpaca(restated(row)), text_gsm8k(row)), 3)

    # only long problems stay above 0.8 once the two templates' boilerplate differs
    for row in some("math", 3, lambda r: cross_score(r) >= 0.82):
        copy, score = restated(row), cross_score(row)
        plant.insert(files["instructions"], copy, row, "near_cross", "instructions", jaccard=score)
    # training rows that copy evaluation items (verbatim, or with one word changed)
    suites = {
        "knowledge": ("knowledge_eval", "knowledge_mc"),
        "boolq": ("boolq_eval", "boolq_mc"),
        "math": ("math_eval", "math_gen"),
    }
    for name, (eval_file, suite) in suites.items():
        for i, item in enumerate(some(eval_file, 3)):
            copy = item.copy() if isinstance(item, dict) else list(item)
            kind = "leak_exact"
            if i == 2 and name != "knowledge":  # knowledge prompts are short: verbatim only
                copy, _ = near_copy(
                    rng,
                    item,
                    ["passage" if name == "boolq" else "question"],
                    TEXT[name],
                    low=0.5,
                    high=0.99,
                )
                kind = "leak_near"
            plant.insert(files[name], copy, item, kind, name, suite=suite)
    for i, row in enumerate(files["boolq"]):
        row["idx"] = i  # BoolQ idx is the row's position in its split
    return files, plant.resolve(files)


# ---------------------------------------------------------------- checks


def check(files: dict[str, list], planted: list[dict]) -> tuple[dict, list[dict]]:
    """Fail if anything overlaps that was not planted; return overlap counts for the record
    and the unplanted rows whose text shares a 13-gram with an eval item's gold answer."""
    flagged = {(p["source"], p["row"]) for p in planted}
    train = [
        (name, i + 1, TEXT[name](row))
        for name in ("instructions", "boolq", "knowledge", "math")
        for i, row in enumerate(files[name])
    ]
    # near/exact duplicates: shingle index over every training row
    index: dict = defaultdict(set)
    for k, (_, _, text) in enumerate(train):
        for s in shingles(text):
            index[s].add(k)
    pairs: dict = defaultdict(int)
    for members in index.values():
        if len(members) > 1 and len(members) < 200:  # very common shingles are template text
            ms = sorted(members)
            for a in range(len(ms)):
                for b in range(a + 1, len(ms)):
                    pairs[(ms[a], ms[b])] += 1
    worst = 0.0
    for (a, b), _ in pairs.items():
        if (train[a][0], train[a][1]) in flagged or (train[b][0], train[b][1]) in flagged:
            continue
        score = jaccard(train[a][2], train[b][2])
        worst = max(worst, score)
        assert score < 0.7, (
            f"unplanted near duplicate: {train[a][:2]} ~ {train[b][:2]} ({score:.2f})"
        )
    # contamination: 13-grams shared with eval prompts (ignoring boilerplate n-grams)
    leaks = 0
    for name, eval_file in (
        ("knowledge", "knowledge_eval"),
        ("boolq", "boolq_eval"),
        ("math", "math_eval"),
    ):
        grams = eval_grams(name, files[eval_file])
        for source, row, text in train:
            if shares_ngram(text, grams):
                leaks += 1
                assert (source, row) in flagged, f"unplanted eval overlap: {source} row {row}"
    # incidental: training rows (not planted) sharing a 13-gram with an eval answer
    incidental = []
    suite_of = {"knowledge": "knowledge_mc", "boolq": "boolq_mc", "math": "math_gen"}
    for name, eval_file in (("boolq", "boolq_eval"), ("math", "math_eval")):
        grams = answer_grams(name, files[eval_file])
        for source, row, text in train:
            if (source, row) in flagged:
                continue
            w = pipeline_words(text)
            hits = {
                j for i in range(len(w) - NGRAM + 1) for j in grams.get(tuple(w[i : i + NGRAM]), ())
            }
            if hits:
                of = {"file": eval_file, "rows": sorted(hits)}
                incidental.append(
                    {
                        "kind": "answer_13gram",
                        "source": source,
                        "row": row,
                        "suite": suite_of[name],
                        "of": of,
                    }
                )
    stats = {"max_unplanted_jaccard": round(worst, 3), "rows_with_eval_13gram": leaks}
    return stats, incidental


# ---------------------------------------------------------------- writing


def dump_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def dump_csv(rows: list[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def main() -> None:
    files, planted = build()
    stats, incidental = check(files, planted)
    outputs = {
        "instructions.json": json.dumps(files["instructions"], indent=1, ensure_ascii=False) + "\n",
        "boolq_train.jsonl": dump_jsonl(files["boolq"]),
        "knowledge_train.csv": dump_csv(files["knowledge"]),
        "math_train.jsonl": dump_jsonl(files["math"]),
        "knowledge_eval.csv": dump_csv(files["knowledge_eval"]),
        "boolq_eval.jsonl": dump_jsonl(files["boolq_eval"]),
        "math_eval.jsonl": dump_jsonl(files["math_eval"]),
    }
    file_of = {
        "instructions": "instructions.json",
        "boolq": "boolq_train.jsonl",
        "knowledge": "knowledge_train.csv",
        "math": "math_train.jsonl",
        "knowledge_eval": "knowledge_eval.csv",
        "boolq_eval": "boolq_eval.jsonl",
        "math_eval": "math_eval.jsonl",
    }
    for p in [*planted, *incidental]:
        p["file"] = file_of[p["source"]]
        p["of"]["file"] = file_of[p["of"]["file"]]
    record = {
        "seed": SEED,
        "generator": "make_demo_data.py",
        "rows": {file_of[k]: len(v) for k, v in files.items()},
        "checks": stats,
        "planted": planted,
        "incidental_leaks_about": "not planted: training rows whose templated rationale shares "
        "a 13-gram with an eval item's gold answer (same numbers); decontamination removes them "
        "too, because it matches the eval item's full text",
        "incidental_leaks": incidental,
    }
    outputs["PLANTED.json"] = json.dumps(record, indent=1) + "\n"
    for name, text in outputs.items():
        tmp = HERE / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(HERE / name)
    total = sum(len(t.encode()) for t in outputs.values())
    print(json.dumps({"bytes": total, **record["rows"], **stats, "planted": len(planted)}))


if __name__ == "__main__":
    main()
