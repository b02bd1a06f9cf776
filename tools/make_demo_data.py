"""Generate the bundled demo dataset, ``pyft/data/demo/demo.jsonl``.

The dataset is meant to be learned by a *tiny, randomly initialised* causal LM in a couple of minutes on CPU,
so every task family answers in one fixed, short template ("The capital of X is Y.", "7 plus 5 is 12.", ...).
Only the questions vary in phrasing. About 15 % of the records are multi-turn (follow-ups refer back to the
previous answer), about 20 % carry a system prompt, and a handful contain non-ASCII text so that byte-level
tokenization of accents, CJK and emoji is exercised.

Everything here was written for pyft; the fact tables are checked by `_check_facts`. The output is
deterministic (fixed seed, no dependence on set or hash order), so running::

    python3 tools/make_demo_data.py          # rewrite the file
    python3 tools/make_demo_data.py --check  # exit 1 if the committed file differs

rewrites the committed file byte-identically. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

SEED = 20240611
OUT_PATH = Path(__file__).resolve().parent.parent / "pyft" / "data" / "demo" / "demo.jsonl"

# (family, total records, of which multi-turn). Totals add up to 400, multi-turn to 60 (15 %).
PLAN: list[tuple[str, int, int]] = [
    ("capitals", 44, 7),
    ("arithmetic", 50, 7),
    ("spelling", 34, 5),
    ("uppercase", 34, 5),
    ("antonyms", 40, 6),
    ("plurals", 40, 6),
    ("colours", 40, 6),
    ("calendar", 40, 7),
    ("units", 40, 6),
    ("greetings", 38, 5),
]
N_SYSTEM = 80  # 20 % of 400

SYSTEM_PROMPTS = [
    "You are a concise assistant.",
    "You are a helpful assistant. Answer in one short sentence.",
    "You are a friendly tutor. Keep your answers short and clear.",
    "Answer the question directly and accurately.",
]

# ------------------------------------------------------------------------------------------------------------
# Facts. Items listed in HELD_OUT_* never appear in demo.jsonl, so they can be used as unseen prompts.
# ------------------------------------------------------------------------------------------------------------

CAPITALS: list[tuple[str, str]] = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Brazil", "Brasília"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Egypt", "Cairo"),
    ("Mexico", "Mexico City"),
    ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"),
    ("Greece", "Athens"),
    ("Ireland", "Dublin"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("Czechia", "Prague"),
    ("Russia", "Moscow"),
    ("Turkey", "Ankara"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"),
    ("Colombia", "Bogotá"),
    ("Iceland", "Reykjavík"),
    ("Belgium", "Brussels"),
    ("the Netherlands", "Amsterdam"),
    ("Cuba", "Havana"),
    ("Morocco", "Rabat"),
    ("Nigeria", "Abuja"),
    ("Ghana", "Accra"),
    ("Ethiopia", "Addis Ababa"),
    ("Ukraine", "Kyiv"),
    ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"),
    ("Croatia", "Zagreb"),
    ("New Zealand", "Wellington"),
    ("the Philippines", "Manila"),
    ("Pakistan", "Islamabad"),
    ("Nepal", "Kathmandu"),
    ("Saudi Arabia", "Riyadh"),
    ("Jordan", "Amman"),
    ("Uruguay", "Montevideo"),
    ("Ecuador", "Quito"),
    ("Paraguay", "Asunción"),
    ("Cameroon", "Yaoundé"),
    ("Costa Rica", "San José"),
]
HELD_OUT_CAPITALS: list[tuple[str, str]] = [("Norway", "Oslo"), ("Kenya", "Nairobi"), ("Peru", "Lima")]

# Each word occurs in exactly one pair, and both directions are valid answers.
ANTONYMS: list[tuple[str, str]] = [
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("up", "down"),
    ("light", "dark"),
    ("early", "late"),
    ("wet", "dry"),
    ("full", "empty"),
    ("strong", "weak"),
    ("rich", "poor"),
    ("left", "right"),
    ("inside", "outside"),
    ("day", "night"),
    ("win", "lose"),
    ("push", "pull"),
    ("true", "false"),
    ("clean", "dirty"),
    ("thick", "thin"),
    ("above", "below"),
    ("buy", "sell"),
    ("first", "last"),
    ("always", "never"),
    ("before", "after"),
    ("north", "south"),
    ("east", "west"),
    ("cheap", "expensive"),
    ("asleep", "awake"),
    ("wide", "narrow"),
    ("deep", "shallow"),
    ("polite", "rude"),
    ("possible", "impossible"),
    ("maximum", "minimum"),
    ("entrance", "exit"),
    ("increase", "decrease"),
    ("remember", "forget"),
    ("question", "answer"),
]
HELD_OUT_ANTONYMS: list[tuple[str, str]] = [("loud", "quiet"), ("tall", "short")]

PLURALS: list[tuple[str, str]] = [
    ("cat", "cats"),
    ("dog", "dogs"),
    ("book", "books"),
    ("tree", "trees"),
    ("apple", "apples"),
    ("house", "houses"),
    ("box", "boxes"),
    ("bus", "buses"),
    ("fox", "foxes"),
    ("church", "churches"),
    ("dish", "dishes"),
    ("glass", "glasses"),
    ("bench", "benches"),
    ("baby", "babies"),
    ("city", "cities"),
    ("story", "stories"),
    ("party", "parties"),
    ("day", "days"),
    ("key", "keys"),
    ("toy", "toys"),
    ("leaf", "leaves"),
    ("knife", "knives"),
    ("wolf", "wolves"),
    ("life", "lives"),
    ("half", "halves"),
    ("shelf", "shelves"),
    ("mouse", "mice"),
    ("child", "children"),
    ("man", "men"),
    ("woman", "women"),
    ("tooth", "teeth"),
    ("foot", "feet"),
    ("person", "people"),
    ("sheep", "sheep"),
    ("deer", "deer"),
    ("ox", "oxen"),
    ("potato", "potatoes"),
    ("tomato", "tomatoes"),
    ("hero", "heroes"),
    ("photo", "photos"),
    ("piano", "pianos"),
    ("crisis", "crises"),
]
HELD_OUT_PLURALS: list[tuple[str, str]] = [("goose", "geese"), ("country", "countries")]

COLOURS: list[tuple[str, str]] = [
    ("a ripe banana", "yellow"),
    ("fresh snow", "white"),
    ("coal", "black"),
    ("a ripe tomato", "red"),
    ("a carrot", "orange"),
    ("a pumpkin", "orange"),
    ("an eggplant", "purple"),
    ("grass", "green"),
    ("a lime", "green"),
    ("milk", "white"),
    ("a crow", "black"),
    ("a flamingo", "pink"),
    ("a ripe strawberry", "red"),
    ("a polar bear", "white"),
    ("chocolate", "brown"),
    ("a cucumber", "green"),
    ("the sky on a clear day", "blue"),
    ("a stop sign", "red"),
    ("salt", "white"),
    ("an emerald", "green"),
    ("a ruby", "red"),
    ("lavender", "purple"),
    ("a zebra", "black and white"),
    ("a panda", "black and white"),
    ("a blueberry", "blue"),
    ("an orange", "orange"),
    ("a pine tree", "green"),
    ("charcoal", "black"),
]
HELD_OUT_COLOURS: list[tuple[str, str]] = [("a lemon", "yellow"), ("a raven", "black")]

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
# (kind, direction, name) triples that never appear as a question.
HELD_OUT_CALENDAR: list[tuple[str, str, str]] = [("day", "after", "Thursday"), ("month", "after", "October")]

# (singular from, plural from, singular to, plural to, factor)
UNITS: list[tuple[str, str, str, str, int]] = [
    ("metre", "metres", "centimetre", "centimetres", 100),
    ("kilometre", "kilometres", "metre", "metres", 1000),
    ("kilogram", "kilograms", "gram", "grams", 1000),
    ("litre", "litres", "millilitre", "millilitres", 1000),
    ("hour", "hours", "minute", "minutes", 60),
    ("minute", "minutes", "second", "seconds", 60),
    ("day", "days", "hour", "hours", 24),
    ("week", "weeks", "day", "days", 7),
    ("year", "years", "month", "months", 12),
    ("centimetre", "centimetres", "millimetre", "millimetres", 10),
    ("foot", "feet", "inch", "inches", 12),
    ("yard", "yards", "foot", "feet", 3),
]
HELD_OUT_UNITS: list[tuple[str, int]] = [("kilogram", 4), ("hour", 3), ("week", 5)]

SPELL_WORDS = [
    "cat", "dog", "sun", "tree", "book", "fish", "bird", "milk", "rain", "star", "apple", "house", "green",
    "light", "water", "music", "ocean", "table", "chair", "bread", "pencil", "window", "garden", "planet",
    "rocket", "yellow", "summer", "winter", "orange", "little", "café", "naïve", "Zürich",
]  # fmt: skip
HELD_OUT_SPELL_WORDS = ["river", "cloud"]

UPPER_PHRASES = [
    "hello world", "good morning", "rust is fast", "the quick fox", "open the door", "machine learning",
    "python code", "see you soon", "blue sky", "happy birthday", "thank you", "small model", "red apple",
    "hot tea", "fine tuning", "big data", "low rank", "the cat sat", "nice work", "lunch time",
    "café au lait", "crème brûlée", "mañana", "zürich",
]  # fmt: skip
HELD_OUT_UPPER_PHRASES = ["good night", "green tea"]

# Greetings: (user text, assistant reply). Replies follow four fixed templates.
HELLO = "Hello! How can I help you today?"
HOW_ARE_YOU = "I am doing well, thank you! How can I help you today?"
WELCOME = "You're welcome! Happy to help."
GOODBYE = "Goodbye! Have a nice day."
GREETINGS_EN: list[tuple[str, str]] = [
    ("Hello!", HELLO),
    ("Hi!", HELLO),
    ("Hi there.", HELLO),
    ("Hey!", HELLO),
    ("Good morning!", HELLO),
    ("Good afternoon!", HELLO),
    ("Good evening!", HELLO),
    ("Hello, anyone there?", HELLO),
    ("How are you?", HOW_ARE_YOU),
    ("Hi, how are you doing?", HOW_ARE_YOU),
    ("Hello, how are you today?", HOW_ARE_YOU),
]
THANKS_EN: list[tuple[str, str]] = [
    ("Thanks!", WELCOME),
    ("Thank you!", WELCOME),
    ("Thank you so much.", WELCOME),
    ("Thanks for the help.", WELCOME),
    ("Great, thanks!", WELCOME),
]
BYE_EN: list[tuple[str, str]] = [
    ("Bye!", GOODBYE),
    ("Goodbye!", GOODBYE),
    ("See you later!", GOODBYE),
    ("That is all for now, bye.", GOODBYE),
]
# Non-English greetings are answered with the same greeting, then the fixed English sentence.
GREETINGS_INTL: list[tuple[str, str]] = [
    ("Hola, ¿qué tal?", "¡Hola! How can I help you today?"),
    ("Grüß Gott aus Zürich!", "Grüß Gott! How can I help you today?"),
    ("Bonjour, ça va ?", "Bonjour ! How can I help you today?"),
    ("こんにちは!", "こんにちは! How can I help you today?"),
    ("你好!", "你好! How can I help you today?"),
    ("Привет!", "Привет! How can I help you today?"),
    ("Hi 👋", "Hello 👋! How can I help you today?"),
    ("Hello from São Paulo!", HELLO),
    ("Merci beaucoup !", "You're welcome! Happy to help. 😊"),
    ("Thanks 🙏", "You're welcome! Happy to help. 😊"),
]


def _check_facts() -> None:
    """Fail loudly on inconsistent fact tables (duplicates, overlaps with held-out items)."""
    antonym_words = [w for pair in ANTONYMS + HELD_OUT_ANTONYMS for w in pair]
    assert len(antonym_words) == len(set(antonym_words)), "an antonym word occurs in two pairs"
    for table, held in [
        (CAPITALS, HELD_OUT_CAPITALS),
        (PLURALS, HELD_OUT_PLURALS),
        (COLOURS, HELD_OUT_COLOURS),
    ]:
        keys = [k for k, _ in table + held]
        assert len(keys) == len(set(keys)), f"duplicate key in {keys}"
    assert not set(SPELL_WORDS) & set(HELD_OUT_SPELL_WORDS)
    assert not set(UPPER_PHRASES) & set(HELD_OUT_UPPER_PHRASES)
    for _, _, _, _, factor in UNITS:
        assert factor > 1


# ------------------------------------------------------------------------------------------------------------
# Task families. Each family function returns `turns` user/assistant exchanges as a list of messages.
# ------------------------------------------------------------------------------------------------------------

Messages = list[dict[str, str]]


class DeckRandom(random.Random):
    """`random.Random` plus `draw`, which deals facts from reshuffled decks.

    Dealing instead of sampling independently spreads the records evenly over each fact table, so every fact
    (including the few accented ones) shows up about equally often.
    """

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self._decks: dict[tuple, list] = {}

    def draw(self, items: list, k: int) -> list:
        """Deal `k` distinct items of `items`, reshuffling a fresh deck whenever the current one runs out."""
        deck = self._decks.setdefault(tuple(items), [])
        out: list = []
        while len(out) < k:
            if not deck:
                deck.extend(self.sample(items, len(items)))
            item = deck.pop()
            if item not in out:
                out.append(item)
        return out


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def capitals(rng: DeckRandom, turns: int) -> Messages:
    first = [
        "What is the capital of {c}?",
        "What's the capital of {c}?",
        "Which city is the capital of {c}?",
        "Name the capital of {c}.",
        "Tell me the capital of {c}.",
        "What city is the capital of {c}?",
    ]
    follow = ["And the capital of {c}?", "What about {c}?", "And {c}?", "How about {c}?"]
    out: Messages = []
    for i, (country, capital) in enumerate(rng.draw(CAPITALS, turns)):
        template = rng.choice(first if i == 0 else follow)
        out += [_user(template.format(c=country)), _assistant(f"The capital of {country} is {capital}.")]
    return out


def _arith_question(rng: random.Random, op: str, a: int, b: int) -> str:
    templates = {
        "plus": [
            "What is {a} plus {b}?",
            "What's {a} plus {b}?",
            "Compute {a} plus {b}.",
            "Add {a} and {b}.",
            "What is {a} + {b}?",
            "How much is {a} plus {b}?",
        ],
        "minus": [
            "What is {a} minus {b}?",
            "What's {a} minus {b}?",
            "Subtract {b} from {a}.",
            "What is {a} - {b}?",
            "How much is {a} minus {b}?",
        ],
        "times": [
            "What is {a} times {b}?",
            "What's {a} times {b}?",
            "Multiply {a} by {b}.",
            "What is {a} * {b}?",
            "How much is {a} times {b}?",
        ],
    }
    return rng.choice(templates[op]).format(a=a, b=b)


def _arith_operands(rng: random.Random, op: str) -> tuple[int, int, int]:
    if op == "plus":
        a, b = rng.randint(1, 12), rng.randint(1, 12)
        return a, b, a + b
    if op == "minus":
        a = rng.randint(2, 20)
        b = rng.randint(1, a)
        return a, b, a - b
    a, b = rng.randint(2, 10), rng.randint(2, 10)
    return a, b, a * b


HELD_OUT_ARITHMETIC: list[tuple[str, int, int]] = [("plus", 4, 9), ("minus", 15, 6), ("times", 3, 7)]


def arithmetic(rng: DeckRandom, turns: int) -> Messages:
    out: Messages = []
    while True:
        op = rng.choice(["plus", "minus", "times"])
        a, b, c = _arith_operands(rng, op)
        if (op, a, b) not in HELD_OUT_ARITHMETIC:
            break
    out += [_user(_arith_question(rng, op, a, b)), _assistant(f"{a} {op} {b} is {c}.")]
    for _ in range(turns - 1):
        # Follow-ups either continue from the previous result ("that") or ask a fresh, elliptic question.
        if rng.random() < 0.6:
            k = rng.randint(1, 9)
            if rng.random() < 0.5 or c < k:
                out += [_user(f"Now add {k} to that."), _assistant(f"{c} plus {k} is {c + k}.")]
                c += k
            else:
                out += [_user(f"Now subtract {k} from that."), _assistant(f"{c} minus {k} is {c - k}.")]
                c -= k
        else:
            while True:
                op = rng.choice(["plus", "minus", "times"])
                a, b, c = _arith_operands(rng, op)
                if (op, a, b) not in HELD_OUT_ARITHMETIC:
                    break
            out += [_user(f"And {a} {op} {b}?"), _assistant(f"{a} {op} {b} is {c}.")]
    return out


def _spell(word: str) -> str:
    return f'The word "{word}" is spelled {"-".join(word)}.'


def _reverse(word: str) -> str:
    return f'The word "{word}" reversed is "{word[::-1]}".'


def spelling(rng: DeckRandom, turns: int) -> Messages:
    spell_q = ["Spell the word {w}.", "How do you spell {w}?", "Spell {w} letter by letter."]
    reverse_q = ["Reverse the word {w}.", "Write {w} backwards.", "What is {w} spelled backwards?"]
    words = rng.draw(SPELL_WORDS, turns)
    task = rng.choice(["spell", "reverse"])
    out: Messages = []
    w = words[0]
    if task == "spell":
        out += [_user(rng.choice(spell_q).format(w=w)), _assistant(_spell(w))]
    else:
        out += [_user(rng.choice(reverse_q).format(w=w)), _assistant(_reverse(w))]
    for i in range(1, turns):
        if task == "spell" and i == 1 and rng.random() < 0.5:
            out += [_user("Now reverse it."), _assistant(_reverse(w))]
            task = "reverse"
        else:
            w = words[i]
            out += [_user(f"And {w}?"), _assistant(_spell(w) if task == "spell" else _reverse(w))]
    return out


def uppercase(rng: DeckRandom, turns: int) -> Messages:
    first = [
        'Convert "{p}" to uppercase.',
        'Write "{p}" in capital letters.',
        'Make "{p}" uppercase.',
        'What is "{p}" in uppercase?',
    ]
    phrases = rng.draw(UPPER_PHRASES, turns)
    out: Messages = []
    for i, p in enumerate(phrases):
        upper = p.upper()
        if i == 0:
            out += [_user(rng.choice(first).format(p=p)), _assistant(f'"{p}" in uppercase is "{upper}".')]
        elif i == 1 and rng.random() < 0.4:
            prev = phrases[0]
            answer = f'"{prev.upper()}" in lowercase is "{prev}".'
            out += [_user("Now make it lowercase."), _assistant(answer)]
        else:
            out += [_user(f'And "{p}"?'), _assistant(f'"{p}" in uppercase is "{upper}".')]
    return out


def antonyms(rng: DeckRandom, turns: int) -> Messages:
    first = [
        "What is the opposite of {w}?",
        "What's the opposite of {w}?",
        "Give me an antonym of {w}.",
        "What is an antonym for {w}?",
        "Opposite of {w}?",
    ]
    follow = ["And {w}?", "What about {w}?", "And the opposite of {w}?"]
    pairs = rng.draw(ANTONYMS, turns)
    out: Messages = []
    prev_word, prev_answer = "", ""
    for i, pair in enumerate(pairs):
        w, a = pair if rng.random() < 0.5 else (pair[1], pair[0])
        if i == 1 and rng.random() < 0.3:
            # Refer back: the opposite of the previous answer is the previous question word.
            out += [
                _user("And the opposite of that?"),
                _assistant(f"The opposite of {prev_answer} is {prev_word}."),
            ]
            continue
        template = rng.choice(first if i == 0 else follow)
        out += [_user(template.format(w=w)), _assistant(f"The opposite of {w} is {a}.")]
        prev_word, prev_answer = w, a
    return out


def plurals(rng: DeckRandom, turns: int) -> Messages:
    first = [
        "What is the plural of {w}?",
        "What's the plural of {w}?",
        "Give the plural form of {w}.",
        "Plural of {w}?",
        "What is the plural form of the word {w}?",
    ]
    follow = ["And {w}?", "What about {w}?", "And the plural of {w}?"]
    out: Messages = []
    for i, (w, p) in enumerate(rng.draw(PLURALS, turns)):
        if i > 0 and rng.random() < 0.25:
            out += [_user(f"And the singular of {p}?"), _assistant(f"The singular of {p} is {w}.")]
            continue
        template = rng.choice(first if i == 0 else follow)
        out += [_user(template.format(w=w)), _assistant(f"The plural of {w} is {p}.")]
    return out


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


def colours(rng: DeckRandom, turns: int) -> Messages:
    first = [
        "What colour is {x}?",
        "What color is {x}?",
        "Which colour is {x}?",
        "Tell me the colour of {x}.",
    ]
    follow = ["And {x}?", "What about {x}?"]
    out: Messages = []
    for i, (x, c) in enumerate(rng.draw(COLOURS, turns)):
        template = rng.choice(first if i == 0 else follow)
        out += [_user(template.format(x=x)), _assistant(f"{_capitalise(x)} is {c}.")]
    return out


def _calendar_pick(rng: random.Random, kind: str) -> tuple[str, str]:
    names = DAYS if kind == "day" else MONTHS
    while True:
        direction = rng.choice(["after", "before"])
        name = rng.choice(names)
        if (kind, direction, name) not in HELD_OUT_CALENDAR:
            return direction, name


def _calendar_answer(kind: str, direction: str, name: str) -> tuple[str, str]:
    names = DAYS if kind == "day" else MONTHS
    step = 1 if direction == "after" else -1
    other = names[(names.index(name) + step) % len(names)]
    return other, f"The {kind} {direction} {name} is {other}."


def calendar(rng: DeckRandom, turns: int) -> Messages:
    first = {
        "after": [
            "What {k} comes after {n}?",
            "Which {k} follows {n}?",
            "What is the {k} after {n}?",
            "Which {k} is after {n}?",
        ],
        "before": ["What {k} comes before {n}?", "Which {k} is before {n}?", "What is the {k} before {n}?"],
    }
    kind = rng.choice(["day", "month"])
    direction, name = _calendar_pick(rng, kind)
    other, answer = _calendar_answer(kind, direction, name)
    out: Messages = [_user(rng.choice(first[direction]).format(k=kind, n=name)), _assistant(answer)]
    for _ in range(turns - 1):
        # "And after that?" continues from the previous answer in the same direction.
        if rng.random() < 0.6 and (kind, direction, other) not in HELD_OUT_CALENDAR:
            name = other
            other, answer = _calendar_answer(kind, direction, name)
            out += [_user(f"And {direction} that?"), _assistant(answer)]
        else:
            direction, name = _calendar_pick(rng, kind)
            other, answer = _calendar_answer(kind, direction, name)
            out += [_user(f"And {direction} {name}?"), _assistant(answer)]
    return out


def _units_pick(rng: random.Random) -> tuple[tuple[str, str, str, str, int], int]:
    while True:
        unit = rng.choice(UNITS)
        n = rng.randint(1, 10)
        if (unit[0], n) not in HELD_OUT_UNITS:
            return unit, n


def _units_answer(unit: tuple[str, str, str, str, int], n: int) -> str:
    sing_from, plural_from, _, plural_to, factor = unit
    return f"{n} {sing_from if n == 1 else plural_from} is {n * factor} {plural_to}."


def units(rng: DeckRandom, turns: int) -> Messages:
    first = [
        "How many {to} are in {n} {frm}?",
        "Convert {n} {frm} to {to}.",
        "What is {n} {frm} in {to}?",
        "How many {to} are there in {n} {frm}?",
    ]
    unit, n = _units_pick(rng)
    frm = unit[0] if n == 1 else unit[1]
    out: Messages = [
        _user(rng.choice(first).format(n=n, frm=frm, to=unit[3])),
        _assistant(_units_answer(unit, n)),
    ]
    for _ in range(turns - 1):
        m = n
        while m == n or (unit[0], m) in HELD_OUT_UNITS:
            m = rng.randint(1, 10)
        n = m
        out += [_user(f"And {n} {unit[0] if n == 1 else unit[1]}?"), _assistant(_units_answer(unit, n))]
    return out


TASK_FAMILIES: list[Callable[[DeckRandom, int], Messages]] = []  # filled below, used by greetings


def greetings(rng: DeckRandom, turns: int) -> Messages:
    if turns == 1:
        pool = GREETINGS_EN + THANKS_EN + BYE_EN  # a fresh list, but decks are keyed by value
        # About three in ten single-turn greetings are non-English or carry an emoji.
        user, reply = rng.draw(GREETINGS_INTL if rng.random() < 0.3 else pool, 1)[0]
        return [_user(user), _assistant(reply)]
    # Multi-turn: greeting, one task question from another family, then thanks (3 exchanges) or the task only.
    user, reply = rng.draw(GREETINGS_EN, 1)[0]
    task = rng.choice(TASK_FAMILIES)(rng, 1)
    out: Messages = [_user(user), _assistant(reply), *task]
    if turns == 3:
        thanks, welcome = rng.choice(THANKS_EN)
        out += [_user(thanks), _assistant(welcome)]
    return out


FAMILIES: dict[str, Callable[[DeckRandom, int], Messages]] = {
    "capitals": capitals,
    "arithmetic": arithmetic,
    "spelling": spelling,
    "uppercase": uppercase,
    "antonyms": antonyms,
    "plurals": plurals,
    "colours": colours,
    "calendar": calendar,
    "units": units,
    "greetings": greetings,
}
TASK_FAMILIES.extend(fn for name, fn in FAMILIES.items() if name != "greetings")


# ------------------------------------------------------------------------------------------------------------
# Assembly and validation.
# ------------------------------------------------------------------------------------------------------------


def build(seed: int = SEED) -> list[tuple[str, dict]]:
    """Build all records.

    Args:
        seed (int): Seed of the single `random.Random` used for every choice. Default: `SEED`.

    Returns:
        list[tuple[str, dict]]: (family, record) pairs in output order; a record is `{"messages": [...]}`.
    """
    _check_facts()
    rng = DeckRandom(seed)
    records: list[tuple[str, dict]] = []
    seen: set[str] = set()
    for family, total, n_multi in PLAN:
        fn = FAMILIES[family]
        made = 0
        while made < total:
            turns = 1 if made >= n_multi else rng.choice([2, 3])
            messages = fn(rng, turns)
            key = json.dumps(messages, ensure_ascii=False)
            # Repeats are allowed for greetings (few distinct texts); everything else is unique.
            if key in seen and family != "greetings":
                continue
            seen.add(key)
            records.append((family, {"messages": messages}))
            made += 1
    rng.shuffle(records)
    for i in sorted(rng.sample(range(len(records)), N_SYSTEM)):
        system = {"role": "system", "content": SYSTEM_PROMPTS[i % len(SYSTEM_PROMPTS)]}
        records[i][1]["messages"].insert(0, system)
    return records


def validate(record: dict) -> None:
    """Raise `ValueError` if `record` is not a well-formed conversation.

    A well-formed conversation is an optional leading system message, then strictly alternating user/assistant
    messages starting with user and ending with assistant, every content a non-empty, stripped string.
    """
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if not body or len(body) % 2:
        raise ValueError("expected user/assistant pairs after the optional system message")
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(f"message {i}: role `{message['role']}`, expected `{expected}`")
    for message in messages:
        if set(message) != {"role", "content"}:
            raise ValueError(f"unexpected keys {sorted(message)}")
        content = message["content"]
        if not isinstance(content, str) or not content or content != content.strip():
            raise ValueError(f"empty or unstripped content: {content!r}")


def render(records: list[tuple[str, dict]]) -> str:
    """Serialise records as JSON lines (UTF-8 text, `ensure_ascii=False`, trailing newline)."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for _, record in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file, write nothing")
    parser.add_argument("--out", type=Path, default=OUT_PATH, help="output path (default: %(default)s)")
    args = parser.parse_args(argv)

    records = build()
    for _, record in records:
        validate(record)
    text = render(records)
    if args.check:
        current = args.out.read_bytes() if args.out.exists() else None
        if current != text.encode("utf-8"):
            print(f"{args.out} is out of date; run python3 tools/make_demo_data.py", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date ({len(records)} records)")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
