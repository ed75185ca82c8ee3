"""GSM8K-style math problems, Alpaca-style instructions and paragraph edits."""

from __future__ import annotations

import random

from rendering import number_words
from vocabulary import (
    ADJECTIVES,
    COUNTRIES,
    ELEMENTS,
    GOODS,
    ITEMS,
    LOCATIONS,
    NAMES,
    NOUNS,
    PLACES,
    PRONOUN,
    SYLLABLES,
    VERBS,
    WEEKDAYS,
)


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
