"""Generate ``pyft/testing/corpus.txt``, the text the test fixtures train their small byte-level BPE on.

The corpus is written for pyft (nothing is downloaded or copied) and mixes, in this order:

1. every system, user and assistant message of ``pyft/data/demo/demo.jsonl``, one per line and again as
   "User: ..." transcripts, so that a tokenizer trained here covers the demo dataset well (run
   ``tools/make_demo_data.py`` first);
2. hand-written English prose paragraphs on many topics;
3. sentences generated from per-topic word lists (the bulk of the English text);
4. short Python, Rust, shell, YAML, TOML, SQL, JavaScript and HTML snippets, generated JSON and Markdown;
5. numbers, dates, times, money, versions and identifiers;
6. whitespace variety: tab-separated tables, space-aligned columns, indentation, runs of blank lines;
7. non-ASCII text: accented Latin (German, French, Spanish, Portuguese, Nordic, Polish, Turkish,
   Vietnamese), Greek, Cyrillic, Arabic, Hebrew, Devanagari, Thai, CJK, symbols and emoji (including ZWJ
   sequences and flags).

Deterministic (fixed seed, stdlib only): ``python3 tools/make_corpus.py`` rewrites the committed file
byte-identically, ``--check`` exits 1 if it is out of date.
"""

from __future__ import annotations

import argparse
import calendar
import datetime
import json
import random
import sys
from pathlib import Path

SEED = 20240612
ROOT = Path(__file__).resolve().parent.parent
DEMO_PATH = ROOT / "pyft" / "data" / "demo" / "demo.jsonl"
OUT_PATH = ROOT / "pyft" / "testing" / "corpus.txt"

N_TOPIC_SENTENCES = 1500  # about 100 KB of generated English
N_JSON_DOCS = 40
N_MARKDOWN_DOCS = 12
N_NUMBER_LINES = 320
N_TABLES = 16

# ------------------------------------------------------------------------------------------------------------
# 2. Hand-written prose. Paragraphs are separated by blank lines; line breaks inside a paragraph are kept.
# ------------------------------------------------------------------------------------------------------------

PROSE = """\
The morning train to the coast was nearly empty. A few students slept against the windows, and an old man read
a newspaper folded into a tight square. Outside, the fields were still grey with frost, and the river followed
the tracks for a while before turning away towards the hills.

Bread is one of the oldest prepared foods. Flour, water, salt and yeast are enough to make a good loaf, but
the baker also needs patience: the dough has to rest, rise and rest again. A hot oven gives the crust its
colour, while steam in the first minutes keeps it from setting too early.

Bees visit thousands of flowers every day. They carry pollen from one plant to the next, and in doing so they
help fruit trees, clover and many vegetables to produce seeds. A healthy hive can hold tens of thousands of
workers, a few hundred drones and a single queen.

The library opens at nine o'clock on weekdays and at ten on Saturdays. Visitors may borrow up to twelve books
at a time for three weeks. Newspapers, maps and rare books cannot leave the reading room, but they can be
photographed without flash.

A tokenizer turns text into a sequence of integers. Byte-level tokenizers start from the 256 possible byte
values, so any string can be encoded, even one full of emoji or characters from scripts that never appeared
during training. Merges learned from a corpus then join frequent pairs of bytes into longer tokens.

Fine-tuning adapts a pretrained model to a new task with a small amount of data. Low-rank adaptation, or LoRA,
freezes the original weights and learns two thin matrices per layer whose product is added to the frozen
weight. Because only the thin matrices are trained, the optimizer state stays small and checkpoints are tiny.

The lighthouse stood on a rock at the end of the harbour wall. Every night its lamp turned slowly, and every
ten seconds a beam swept across the water. Fishermen said they could tell which harbour they were near just by
counting the seconds between flashes.

Volcanoes form where molten rock rises through the crust. Some erupt explosively and throw ash high into the
atmosphere; others release slow rivers of lava that cool into black, ropy stone. The soil around old volcanoes
is often very fertile, which is why farms and villages crowd their lower slopes.

Chess is played on a board of sixty-four squares. Each player begins with sixteen pieces: one king, one queen,
two rooks, two bishops, two knights and eight pawns. The goal is to checkmate the opposing king, which means
attacking it in a way that cannot be escaped.

Good documentation explains why, not only what. It names the units of every quantity, gives the shape of every
array, states the default of every option and shows one short example that can be copied and run. When the
code changes, the documentation changes in the same commit.

In autumn the forest changes colour within a few weeks. Maples turn red and orange, birches turn yellow, and
oaks hold on to their brown leaves until the first storms of winter. Mushrooms appear after the rain, and the
paths smell of wet earth.

A bicycle is a remarkably efficient machine. A rider at a comfortable pace uses less energy per kilometre than
a person walking, and the bicycle itself needs little more than air in the tyres, oil on the chain and brakes
that work. In many cities it is still the fastest way to cross the centre at rush hour.

The moon has no air and no liquid water on its surface. Its days and nights each last about two weeks, and the
temperature swings from far above boiling to far below freezing. The footprints left by astronauts will stay
sharp for a very long time, because there is no wind to blur them.

When a program fails, read the error message slowly. It usually says what went wrong, where it went wrong and
sometimes what to try next. Reproduce the failure with the smallest possible input, write it down as a test,
and only then start changing the code.

Coffee plants grow best on tropical hillsides with regular rain and mild temperatures. The fruit, called a
cherry, holds two seeds that are dried, roasted and ground. A light roast keeps more of the fruity, acidic
flavours; a dark roast tastes more bitter and smoky.

Maps are simplified pictures of the world. A city map leaves out most buildings but keeps the streets, the
parks and the railway stations; a hiking map shows contour lines, springs and huts. Every map has a scale, and
a good one tells you which way is north.

The market opens before sunrise. Farmers unload crates of apples, cabbages and eggs, a fishmonger lays out
ice, and a woman sells flowers from buckets lined up along the pavement. By noon most stalls are packed away
and the square is swept clean.

Rivers shape the land they cross. Over thousands of years they cut valleys, carry sand and gravel to the sea
and build wide deltas at their mouths. Cities grew along rivers because the water brought trade, food and a
way to travel long before roads were paved.

A clock only needs a regular beat and a way to count it. Early clocks used falling water or burning candles;
later ones used swinging pendulums, then vibrating quartz crystals. Modern atomic clocks count the vibrations
of atoms and drift by less than a second over millions of years.

The museum's new wing displays tools from daily life: spoons carved from bone, clay lamps, iron keys and a
loom that still works. Children are allowed to touch copies of the objects, and a guide shows how the loom
turns a pile of wool into a strip of cloth.

Deserts are not always hot. Some of the largest are cold, with snow in winter and freezing winds. What makes a
desert is the lack of rain: less than about 250 millimetres a year. Plants there store water in thick stems or
send roots deep into the ground.

Training a small language model on a tiny dataset is a useful test. If the loss does not fall within a few
hundred steps, something is broken: the labels may be shifted the wrong way, the padding may be counted, or
the learning rate may be far too small. A model that can memorise ten examples is at least wired correctly.

Birds that migrate travel thousands of kilometres each year. Swallows leave Europe in autumn and spend the
winter in Africa, then return in spring, often to the very same barn. They find their way using the sun, the
stars, the Earth's magnetic field and landmarks they remember from earlier journeys.

Recycling works best when materials are kept clean and separate. Glass can be melted and reshaped again and
again; paper fibres get shorter each time they are reused; many plastics can be recycled only once or twice.
Using things for longer is often better than recycling them quickly.

The orchestra tuned to a single note from the oboe. Then the hall went quiet, the conductor raised her hands,
and the first violins began a slow, soft melody. By the end of the symphony the whole audience was on its
feet.

Numbers have many written forms. Seven can be written as 7, as VII or as 0b111, and one million as 1,000,000,
as 1e6 or as 10^6. Dates are just as varied: the same day may appear as 2024-03-05, as 5 March 2024 or as
03/05/2024, which readers in different countries interpret differently.

A well-tested function has tests for the common case, for the edge cases and for invalid input. Empty lists,
zero, negative numbers, very long strings and characters outside ASCII are good places to look for bugs. Each
test should check one behaviour and fail with a message that points at the cause.

The garden was small but full of life. Tomatoes climbed up wooden stakes, beans twisted around strings, and
lettuce grew in the shade of a plum tree. Every evening someone filled the watering can from the rain barrel
and walked slowly along the rows.

Mountains make their own weather. Warm air rising up a slope cools, and its moisture turns into clouds and
rain, so one side of a range can be green and wet while the other side is dry. Climbers learn to start early,
before the afternoon storms build over the peaks.

Checkpoints let a long training run survive interruptions. A good checkpoint stores the model weights, the
optimizer state, the learning-rate schedule, the random number generator state and the step count, so that a
resumed run continues exactly where it stopped.
"""

# ------------------------------------------------------------------------------------------------------------
# 3. Topic word lists for generated sentences: subject + past-tense verb + object + adverbial phrase.
# ------------------------------------------------------------------------------------------------------------

# fmt: off
TOPICS: dict[str, tuple[list[str], list[str], list[str], list[str]]] = {
    "kitchen": (
        ["the cook", "my grandmother", "a young chef", "the baker", "our neighbour", "the students"],
        ["stirred", "tasted", "chopped", "washed", "boiled", "served", "seasoned", "sliced"],
        ["the onions", "a pot of soup", "fresh herbs", "the potatoes", "a loaf of bread", "the tomato sauce",
         "a bowl of rice", "the carrots"],
        ["before dinner", "in the small kitchen", "with a wooden spoon", "for the whole family",
         "late in the evening", "while the radio played"],
    ),
    "weather": (
        ["the wind", "a cold front", "the storm", "the morning fog", "the summer heat", "a light drizzle"],
        ["covered", "reached", "cooled", "surprised", "soaked", "crossed", "darkened"],
        ["the valley", "the northern coast", "the city streets", "the farmers", "the hills", "the harbour",
         "the open fields"],
        ["by midday", "overnight", "for three days", "just after sunrise", "without warning",
         "earlier than expected"],
    ),
    "travel": (
        ["the travellers", "a tired pilot", "the tour guide", "my cousin", "two backpackers",
         "the bus driver"],
        ["visited", "photographed", "crossed", "explored", "left", "booked", "reached"],
        ["the old bridge", "a mountain village", "the border", "the night train", "a quiet hotel",
         "the famous cathedral", "the island"],
        ["in the spring", "after a long delay", "on foot", "before the rain started", "for the first time",
         "with a paper map"],
    ),
    "science": (
        ["the researchers", "a chemist", "the biology class", "the lab assistant", "an astronomer",
         "the physicist"],
        ["measured", "observed", "recorded", "tested", "compared", "published", "repeated"],
        ["the samples", "the results", "a new comet", "the temperature", "the growth of the cells",
         "the experiment", "the data"],
        ["with great care", "twice a day", "under a microscope", "in a cold room", "over several months",
         "using a simple model"],
    ),
    "computing": (
        ["the compiler", "the test suite", "a junior developer", "the build server", "the script",
         "the maintainer"],
        ["rejected", "compiled", "cached", "reviewed", "refactored", "deployed", "logged"],
        ["the pull request", "the release notes", "a memory leak", "the configuration file",
         "the new function", "the database schema", "every warning"],
        ["in under a minute", "on every commit", "without any errors", "after the upgrade",
         "on the main branch", "for the second time"],
    ),
    "sport": (
        ["the goalkeeper", "the home team", "a young runner", "the coach", "the referee", "the captain"],
        ["won", "lost", "trained for", "watched", "celebrated", "planned", "missed"],
        ["the final match", "the relay race", "a penalty kick", "the championship",
         "the last game of the season", "the warm-up"],
        ["in front of a full stadium", "in the pouring rain", "by a single point", "with a smile",
         "on Saturday afternoon", "after extra time"],
    ),
    "music": (
        ["the choir", "a street musician", "the pianist", "the band", "my sister", "the conductor"],
        ["played", "rehearsed", "recorded", "composed", "sang", "performed", "tuned"],
        ["a slow waltz", "the old folk song", "a new album", "the second movement", "a cheerful melody",
         "the national anthem"],
        ["at the town hall", "for an hour", "without sheet music", "under the bright lights",
         "in a small studio", "to a quiet audience"],
    ),
    "garden": (
        ["the gardener", "my father", "the children", "a volunteer", "the old farmer", "our class"],
        ["planted", "watered", "pruned", "picked", "harvested", "weeded", "fed"],
        ["the roses", "a row of beans", "the apple tree", "the strawberries", "the vegetable beds",
         "the hedge", "sunflower seeds"],
        ["in early May", "after the frost", "every second evening", "with rainwater",
         "before the heat of the day", "along the fence"],
    ),
    "history": (
        ["the historians", "a museum curator", "the archaeologists", "an old sailor", "the village priest",
         "the king"],
        ["discovered", "described", "restored", "studied", "copied", "buried", "rebuilt"],
        ["the ancient walls", "a bronze coin", "the city archive", "a hand-written letter", "the old harbour",
         "the ruined castle", "a map of the coast"],
        ["in the last century", "near the river", "after the great fire", "during the long winter",
         "with simple tools", "for future generations"],
    ),
    "animals": (
        ["the fox", "a grey heron", "the sheepdog", "a family of otters", "the young eagle", "the cat"],
        ["chased", "caught", "followed", "watched", "ignored", "found", "guarded"],
        ["a small fish", "the flock", "the mouse", "the other birds", "a fallen apple", "the farmer's dog",
         "the empty nest"],
        ["near the pond", "at dawn", "across the meadow", "in the tall grass", "without a sound",
         "for a long time"],
    ),
    "city": (
        ["the mayor", "the council", "a taxi driver", "the shop owners", "the tram", "the street cleaners"],
        ["opened", "closed", "repaired", "painted", "announced", "approved", "crossed"],
        ["the new library", "the main square", "a cycle lane", "the old market hall", "the bus station",
         "the park gates", "a public fountain"],
        ["last week", "after years of planning", "at eight in the morning", "for the festival",
         "despite the protests", "in record time"],
    ),
    "ocean": (
        ["the fishermen", "a whale", "the research ship", "the divers", "the coast guard", "a sea turtle"],
        ["spotted", "crossed", "mapped", "rescued", "followed", "sampled", "avoided"],
        ["the coral reef", "a sinking boat", "the deep trench", "a school of sardines", "the warm current",
         "the rocky shore"],
        ["far from land", "during the storm", "at low tide", "in clear water", "for several hours",
         "before nightfall"],
    ),
    "school": (
        ["the teacher", "a curious pupil", "the headmaster", "the whole class", "my friend", "the librarian"],
        ["explained", "wrote", "corrected", "read", "drew", "solved", "memorised"],
        ["the homework", "a short poem", "the multiplication table", "a map of Europe", "the spelling test",
         "a difficult problem"],
        ["on the blackboard", "before the bell rang", "in neat handwriting", "with coloured pencils",
         "after lunch", "in complete silence"],
    ),
    "machine learning": (
        ["the optimizer", "the training loop", "the tokenizer", "the small model", "the evaluation script",
         "the data loader"],
        ["reduced", "processed", "shuffled", "saved", "evaluated", "packed", "tokenized"],
        ["the loss", "every batch", "the validation set", "a checkpoint", "the learning rate",
         "the conversations", "ten thousand tokens"],
        ["in the first epoch", "on a single GPU", "within a few minutes", "at every step",
         "with gradient clipping", "on the CPU"],
    ),
}

# fmt: on

CONNECTORS = ["Then", "Later", "Meanwhile", "Afterwards", "Surprisingly", "As usual", "Once again", "Finally"]

# ------------------------------------------------------------------------------------------------------------
# 4. Code snippets (hand-written for this corpus).
# ------------------------------------------------------------------------------------------------------------

CODE_SNIPPETS = [
    '''\
def moving_average(values: list[float], window: int) -> list[float]:
    """Return the simple moving average of `values` over `window` items."""
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    out: list[float] = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            out.append(total / window)
    return out
''',
    """\
import json
from pathlib import Path


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: {e}") from None
    return rows
""",
    """\
from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    lr: float = 3e-4
    batch_size: int = 8
    max_steps: int = 1_000
    warmup_steps: int = 100
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"`lr` must be positive, got {self.lr}")
        if self.warmup_steps > self.max_steps:
            raise ValueError("`warmup_steps` must not exceed `max_steps`")
""",
    """\
import math


def cosine_lr(step: int, base_lr: float, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    # 1) linear warmup from 0 to base_lr
    if step < warmup:
        return base_lr * (step + 1) / warmup
    # 2) cosine decay down to min_ratio * base_lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (min_ratio + (1.0 - min_ratio) * coeff)
""",
    """\
class WordCounter:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, text: str) -> None:
        for word in text.lower().split():
            self.counts[word] = self.counts.get(word, 0) + 1

    def most_common(self, n: int = 3) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def __repr__(self) -> str:
        return f"WordCounter({len(self.counts)} words)"
""",
    """\
def lora_forward(x, weight, lora_a, lora_b, alpha: float, rank: int):
    # x: (B, T, d_in), weight: (d_out, d_in), lora_a: (r, d_in), lora_b: (d_out, r)
    base = x @ weight.T                     # (B, T, d_out)
    update = (x @ lora_a.T) @ lora_b.T      # (B, T, r) -> (B, T, d_out)
    return base + (alpha / rank) * update
""",
    """\
async def fetch_all(client, urls: list[str]) -> dict[str, str | None]:
    results: dict[str, str | None] = {}
    for url in urls:
        try:
            async with client.get(url, timeout=10) as resp:
                results[url] = await resp.text()
        except TimeoutError:
            results[url] = None
    return results
""",
    """\
import pytest


@pytest.mark.parametrize(("a", "b", "expected"), [(1, 2, 3), (7, 5, 12), (0, 0, 0), (-4, 4, 0)])
def test_add(a: int, b: int, expected: int) -> None:
    assert a + b == expected


def test_divide_by_zero() -> None:
    with pytest.raises(ZeroDivisionError):
        _ = 1 / 0
""",
    """\
if __name__ == "__main__":
    import sys

    name = sys.argv[1] if len(sys.argv) > 1 else "world"
    print(f"Hello, {name}!")
    print(f"{3.14159:.2f} {42:>5} {255:#x} {'left':<8}|")
    squares = {n: n * n for n in range(10) if n % 2 == 0}
    print(squares, sum(squares.values()), max(squares, key=squares.get))
""",
    '''\
def pack_greedy(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit packing of sequence lengths into bins of `capacity` tokens."""
    bins: list[list[int]] = []
    used: list[int] = []
    for i, n in enumerate(lengths):
        for b, u in enumerate(used):
            if u + n <= capacity:
                bins[b].append(i)
                used[b] += n
                break
        else:
            bins.append([i])
            used.append(n)
    return bins
''',
    """\
/// Returns the number of bytes needed to store `n` elements of `dtype`.
pub fn nbytes(dtype: DType, n: usize) -> Result<usize, Error> {
    n.checked_mul(dtype.size())
        .ok_or(Error::Overflow { what: "nbytes" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbytes_f32() {
        assert_eq!(nbytes(DType::F32, 4).unwrap(), 16);
    }
}
""",
    """\
fn cu_seqlens(lengths: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(lengths.len() + 1);
    let mut total = 0u32;
    out.push(0);
    for &len in lengths {
        total += len;
        out.push(total);
    }
    out
}

fn main() {
    let v = cu_seqlens(&[3, 5, 2]);
    println!("{:?}", v); // [0, 3, 8, 10]
}
""",
    """\
$ python3 -m venv .venv && source .venv/bin/activate
$ pip install -e ".[train,dev]"
$ pyft train --config configs/lora_sft.yaml train.max_steps=200 lora.rank=8
$ ls -la checkpoints/ | grep step
$ du -sh checkpoints/step_000200/
$ export TOKENIZERS_PARALLELISM=false
$ cargo test --workspace && cargo clippy --all-targets -- -D warnings
""",
    """\
# pyft train --config lora_sft.yaml
model:
  name: tiny-llama
  dtype: bfloat16
lora:
  rank: 8
  alpha: 16
  dropout: 0.05
  target_modules: [q_proj, k_proj, v_proj, o_proj]
train:
  lr: 3.0e-4
  max_steps: 500
  batch_size: 16
  grad_accum: 4   # 16 * 4 = 64 sequences per optimizer step
""",
    """\
[package]
name = "demo"
version = "0.1.0"
edition = "2021"

[dependencies]
serde = { version = "1", features = ["derive"] }
rayon = "1.10"

[profile.release]
lto = "fat"
codegen-units = 1
""",
    """\
SELECT country, COUNT(*) AS n_cities, AVG(population) AS mean_pop
FROM cities
WHERE population > 1000000
GROUP BY country
HAVING COUNT(*) >= 2
ORDER BY n_cities DESC, country ASC
LIMIT 10;
""",
    """\
const items = [{ name: "pen", price: 1.5, qty: 4 }, { name: "book", price: 12.0, qty: 1 }];
const total = items.reduce((sum, item) => sum + item.price * item.qty, 0);
console.log(`Total: ${total.toFixed(2)}`);
document.querySelector("#total").textContent = total > 10 ? "big order" : "small order";
""",
    """\
<!DOCTYPE html>
<html lang="en">
  <head><meta charset="utf-8"><title>Demo &amp; test</title></head>
  <body>
    <p class="note">Hello &lt;world&gt;! <a href="https://example.com/?q=1&amp;lang=en">link</a></p>
  </body>
</html>
""",
    """\
#include <stdio.h>

int main(int argc, char **argv) {
    for (int i = 0; i < argc; ++i) {
        printf("argv[%d] = %s\\n", i, argv[i]);
    }
    return 0;
}
""",
    """\
.PHONY: test build

build:
\tmaturin develop --release

test: build
\tpytest -q tests/ -k "not slow"
""",
]

# fmt: off
JSON_KEYS = ["id", "name", "title", "score", "tags", "count", "enabled", "ratio", "created_at", "author",
             "lang", "tokens", "meta", "notes", "version", "items", "path", "status"]
JSON_WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "lamp", "orange", "window",
              "rocket", "garden", "piano", "train", "ocean", "pencil", "forest", "summer", "winter", "planet",
              "café", "naïve", "Zürich", "東京", "Москва", "emoji 🚀"]
STATUSES = ["ok", "pending", "failed", "skipped", "running"]

MD_SECTIONS = ["Installation", "Usage", "Configuration", "Examples", "Troubleshooting", "FAQ", "Changelog",
               "Design notes", "Limitations", "Contributing", "License", "Benchmarks"]
MD_TITLES = ["Quick start", "Training a tiny model", "Packing sequences", "Merging adapters",
             "Exporting to GGUF", "Writing a dataset", "Evaluating a checkpoint", "Tokenizer notes",
             "Release checklist", "Garden diary", "Trip planning", "Recipe: lentil soup"]
# fmt: on

# ------------------------------------------------------------------------------------------------------------
# 7. Non-ASCII text (hand-written; simple, correct sentences).
# ------------------------------------------------------------------------------------------------------------

MULTILINGUAL: dict[str, list[str]] = {
    "de": [
        "Guten Morgen! Wie geht es Ihnen?",
        "Der Zug nach München fährt um 8:15 Uhr ab.",
        "Ich hätte gern ein Stück Apfelkuchen und einen Kaffee.",
        "Die Straßenbahn ist heute pünktlich.",
        "Im Frühling blühen die Bäume im Garten.",
        "Können Sie mir bitte den Weg zum Bahnhof zeigen?",
        "Viele Grüße aus Zürich und Köln!",
        "Das Mädchen liest ein Buch über Vögel.",
        "Übung macht den Meister.",
        "Die Größe der Datei beträgt zwölf Megabyte.",
    ],
    "fr": [
        "Bonjour tout le monde !",
        "Le café est très chaud ce matin.",
        "Où se trouve la gare, s'il vous plaît ?",
        "J'aime lire des romans pendant l'été.",
        "Nous avons mangé une crème brûlée délicieuse.",
        "Il fait beau à Montréal aujourd'hui.",
        "Ça va très bien, merci !",
        "L'hôpital est à côté de l'école.",
        "Les élèves préparent une fête pour Noël.",
        "Où est passé mon chapeau ?",
    ],
    "es": [
        "¿Dónde está la biblioteca?",
        "Buenos días, señora García.",
        "Mañana vamos a la playa con mis amigos.",
        "¡Qué día tan bonito!",
        "El niño come una manzana roja.",
        "Me gusta el café con leche.",
        "¿Cuántos años tienes?",
        "El tren llegó a Bogotá a las diez.",
        "La canción me recuerda a mi niñez.",
    ],
    "pt": [
        "Bom dia! Tudo bem?",
        "A capital do Brasil é Brasília.",
        "Obrigado pela ajuda.",
        "Vamos à praia amanhã de manhã.",
        "São Paulo é uma cidade muito grande.",
    ],
    "it": [
        "Buongiorno, come stai?",
        "La città è molto bella di notte.",
        "Vorrei un caffè, per favore.",
        "Perché il cielo è blu?",
    ],
    "nordic": [
        "Välkommen till Göteborg!",
        "Reykjavík er höfuðborg Íslands.",
        "Takk for hjelpen!",
        "Smørrebrød, Ærø, Øresund, Ålesund, Åre, Malmö.",
    ],
    "central-eu": [
        "Dzień dobry! Dziękuję bardzo.",
        "Zażółć gęślą jaźń.",
        "Děkuji, na shledanou.",
        "Teşekkür ederim.",
        "İstanbul çok güzel bir şehir.",
        "Xin chào! Cảm ơn bạn rất nhiều.",
    ],
    "el": ["Καλημέρα!", "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.", "Ευχαριστώ πολύ."],
    "ru-uk": [
        "Привет, мир!",
        "Москва — столица России.",
        "Спасибо за помощь.",
        "Сегодня хорошая погода.",
        "Я люблю читать книги.",
        "Как дела?",
        "Київ — столиця України.",
        "Дякую!",
    ],
    "ar-he": [
        "مرحبا بالعالم",
        "شكرا جزيلا",
        "القاهرة هي عاصمة مصر.",
        "صباح الخير",
        "كيف حالك؟",
        "שלום עולם",
        "תודה רבה",
    ],
    "hi-th": ["नमस्ते दुनिया", "धन्यवाद", "नई दिल्ली भारत की राजधानी है।", "สวัสดี", "ขอบคุณ"],
    "zh": [
        "你好，世界！",
        "今天天气很好。",
        "我喜欢学习中文。",
        "北京是中国的首都。",
        "谢谢你的帮助。",
        "这个模型很小，但是训练得很快。",
        "请问，火车站在哪里？",
    ],
    "ja": [
        "こんにちは、世界！",
        "東京は日本の首都です。",
        "ありがとうございます。",
        "今日はいい天気ですね。",
        "猫が好きです。",
        "すみません、駅はどこですか？",
        "カタカナ：コンピューター、データ、モデル。",
    ],
    "ko": ["안녕하세요!", "감사합니다.", "서울은 한국의 수도입니다."],
    "emoji": [
        "🎉 Release day! 🚀",
        "Tests passed ✅ in 3.2 s",
        "Build failed ❌ — retrying 🔁",
        "I ❤️ Rust 🦀 and Python 🐍",
        "Weather: ☀️ 22 °C, later 🌧️ and 15 °C",
        "👍 Looks good to me.",
        "Dinner ideas: 🍕 🍝 🍣 🍜 🥗",
        "Family: 👨‍👩‍👧‍👦 (a ZWJ sequence)",
        "Flags: 🇫🇷 🇩🇪 🇯🇵 🇧🇷 🇨🇭",
        "Waves: 👋🏻 👋🏽 👋🏿",
        "Thanks 🙏 and see you soon 😊",
    ],
    "symbols": [
        "Prices: €5, £4, ¥600, ₹250 and $7.",
        "Math: α + β = γ, ∑ xᵢ, √2 ≈ 1.414, π ≈ 3.14159, ∞, ≤ ≥ ≠ ±, 10 × 3 ÷ 2.",
        "Quotes: “double”, ‘single’, «guillemets», „German“.",
        "Dashes and dots: en – em — ellipsis … middle · bullet •",
        "Arrows: ← → ↑ ↓ ⇒ ⇔",
        "Units: −5 °C, 3 µm, 20 m², 9.81 m/s², 5 Ω, 100 km/h.",
        "Marks: © 2024, ® and ™, § 3, ¶ 2, † ‡, ½ ¼ ¾.",
    ],
}
# fmt: off
ACCENTED_CITIES = ["Zürich", "Brasília", "Bogotá", "Reykjavík", "Asunción", "Yaoundé", "San José", "Köln",
                   "Montréal", "Göteborg", "Kraków", "São Paulo", "Málaga", "Besançon", "Tromsø",
                   "Düsseldorf", "Łódź", "Genève", "Mönchengladbach", "Córdoba"]
EMOJI = ["🚀", "✅", "❌", "🎉", "😊", "🙏", "👍", "🔥", "🌍", "☀️", "🌧️", "🍕", "🐍", "🦀", "❤️", "⭐", "📦",
         "🧪"]
# fmt: on


# ------------------------------------------------------------------------------------------------------------
# Section builders. Each returns a list of text blocks; blocks are joined with blank lines.
# ------------------------------------------------------------------------------------------------------------


def demo_messages() -> list[str]:
    """Every message text of the demo dataset, twice: one message per line, then as role-prefixed transcripts.

    Seeing each demo word at least twice helps the small BPE learn whole-word merges for the demo vocabulary.
    """
    with open(DEMO_PATH, encoding="utf-8") as f:
        records = [json.loads(line)["messages"] for line in f]
    lines = [message["content"] for messages in records for message in messages]
    transcripts = [
        "\n".join(f"{message['role'].capitalize()}: {message['content']}" for message in messages)
        for messages in records
    ]
    return ["\n".join(lines), *transcripts]


def prose() -> list[str]:
    return [block.strip("\n") for block in PROSE.split("\n\n")]


def _sentence(rng: random.Random, topic: str) -> str:
    subjects, verbs, objects, tails = TOPICS[topic]
    subj, verb, obj, tail = rng.choice(subjects), rng.choice(verbs), rng.choice(objects), rng.choice(tails)
    form = rng.random()
    if form < 0.55:
        text = f"{subj} {verb} {obj} {tail}."
    elif form < 0.7:
        text = f"{tail}, {subj} {verb} {obj}."
    elif form < 0.8:
        text = f"{rng.choice(CONNECTORS)}, {subj} {verb} {obj} {tail}."
    elif form < 0.9:
        subj2, verb2, obj2 = rng.choice(subjects), rng.choice(verbs), rng.choice(objects)
        text = f"{subj} {verb} {obj}, and {subj2} {verb2} {obj2}."
    else:
        text = f"Did you know that {subj} {verb} {obj} {tail}?"
    return text[0].upper() + text[1:]


def topic_paragraphs(rng: random.Random) -> list[str]:
    topics = list(TOPICS)
    blocks: list[str] = []
    made = 0
    while made < N_TOPIC_SENTENCES:
        topic = rng.choice(topics)
        n = rng.randint(3, 7)
        sentences = [_sentence(rng, topic) for _ in range(n)]
        made += n
        # Mostly one line per paragraph, sometimes one sentence per line (as in subtitles or poems).
        blocks.append("\n".join(sentences) if rng.random() < 0.15 else " ".join(sentences))
    return blocks


def _json_value(rng: random.Random, key: str, depth: int) -> object:
    if key in ("id", "count", "tokens"):
        return rng.randint(0, 100_000)
    if key in ("score", "ratio"):
        return round(rng.uniform(-1, 100), rng.randint(1, 4))
    if key == "enabled":
        return rng.choice([True, False, None])
    if key == "created_at":
        return _random_date(rng).isoformat() + f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
    if key == "tags":
        return rng.sample(JSON_WORDS, rng.randint(0, 4))
    if key == "version":
        return f"{rng.randint(0, 3)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"
    if key == "status":
        return rng.choice(STATUSES)
    if key == "path":
        suffix = rng.choice([".jsonl", ".txt", ".safetensors"])
        return "/".join(["data", *rng.sample(JSON_WORDS[:20], 2)]) + suffix
    if key in ("meta", "items") and depth < 2:
        return (
            _json_object(rng, depth + 1)
            if key == "meta"
            else [_json_object(rng, depth + 1) for _ in range(rng.randint(1, 3))]
        )
    return " ".join(rng.sample(JSON_WORDS, rng.randint(1, 3)))


def _json_object(rng: random.Random, depth: int = 0) -> dict:
    keys = rng.sample(JSON_KEYS, rng.randint(2, 6))
    return {key: _json_value(rng, key, depth) for key in keys}


def json_docs(rng: random.Random) -> list[str]:
    blocks = []
    for _ in range(N_JSON_DOCS):
        obj = _json_object(rng)
        style = rng.random()
        if style < 0.4:
            blocks.append(json.dumps(obj, indent=2, ensure_ascii=False))
        elif style < 0.7:
            blocks.append(json.dumps(obj, ensure_ascii=False))
        elif style < 0.85:
            blocks.append(json.dumps(obj, indent=4, ensure_ascii=True, sort_keys=True))
        else:
            blocks.append("\n".join(json.dumps(_json_object(rng, 1), ensure_ascii=False) for _ in range(4)))
    # A few raw chat records, as they appear in training files.
    with open(DEMO_PATH, encoding="utf-8") as f:
        raw = f.read().splitlines()
    blocks.append("\n".join(rng.sample(raw, 24)))
    return blocks


def markdown_docs(rng: random.Random) -> list[str]:
    blocks = []
    topics = list(TOPICS)
    for title in MD_TITLES[:N_MARKDOWN_DOCS]:
        topic = rng.choice(topics)
        lines = [f"# {title}", "", " ".join(_sentence(rng, topic) for _ in range(3)), ""]
        for section in rng.sample(MD_SECTIONS, rng.randint(2, 4)):
            lines += [f"## {section}", ""]
            kind = rng.random()
            if kind < 0.3:
                lines += [f"- {_sentence(rng, topic)}" for _ in range(rng.randint(2, 5))]
            elif kind < 0.5:
                lines += [f"{i}. {_sentence(rng, topic)}" for i in range(1, rng.randint(3, 6))]
            elif kind < 0.7:
                lines += ["| name | value | unit |", "|------|------:|:----:|"]
                for word in rng.sample(JSON_WORDS[:20], 3):
                    unit = rng.choice(["ms", "MB", "tok/s", "%"])
                    lines.append(f"| `{word}` | {rng.randint(1, 5000)} | {unit} |")
            elif kind < 0.85:
                cmd = rng.choice(
                    ["pyft train --config lora_sft.yaml", "pytest -q -k pack", "cargo bench --no-run"]
                )
                lines += ["Run:", "", "```bash", cmd, "```"]
            else:
                lines += [
                    f"> **Note:** {_sentence(rng, topic)}",
                    f"> See [the docs](https://example.com/{topic}).",
                ]
            lines += ["", f"Some *emphasis*, some **bold** text and `inline_code()` about {topic}.", ""]
        blocks.append("\n".join(lines).rstrip("\n"))
    return blocks


def _random_date(rng: random.Random) -> datetime.date:
    start = datetime.date(1950, 1, 1).toordinal()
    return datetime.date.fromordinal(rng.randint(start, datetime.date(2035, 12, 31).toordinal()))


MONTH_NAMES = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
DAY_NAMES = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def number_lines(rng: random.Random) -> list[str]:
    lines = []
    for _ in range(N_NUMBER_LINES):
        d = _random_date(rng)
        long_date = f"{DAY_NAMES[d.weekday()]}, {d.day} {MONTH_NAMES[d.month - 1]} {d.year}"
        us_date = f"{MONTH_NAMES[d.month - 1]} {d.day}, {d.year}"
        n = rng.randint(0, 99_999)
        x = rng.uniform(0, 10_000)
        kind = rng.randrange(12)
        if kind == 0:
            lines.append(f"Order #{n} was shipped on {long_date} ({d.isoformat()}).")
        elif kind == 1:
            lines.append(
                f"The temperature was {rng.uniform(-20, 40):.1f} °C at {rng.randint(0, 23):02d}:"
                f"{rng.randint(0, 59):02d} on {us_date}."
            )
        elif kind == 2:
            lines.append(
                f"Invoice {d.year}-{n:05d}: total €{x:,.2f}, VAT {rng.choice([7, 10, 19, 20, 21])}%."
            )
        elif kind == 3:
            lines.append(f"Population: {rng.randint(1_000, 40_000_000):,} people (census of {d.year}).")
        elif kind == 4:
            lines.append(
                f"Version {rng.randint(0, 4)}.{rng.randint(0, 30)}.{rng.randint(0, 12)} was released "
                f"on {d.day:02d}/{d.month:02d}/{d.year}."
            )
        elif kind == 5:
            lines.append(f"Coordinates: {rng.uniform(-90, 90):.4f}, {rng.uniform(-180, 180):.4f}.")
        elif kind == 6:
            a, b = rng.randint(1, 999), rng.randint(1, 999)
            lines.append(f"{a} / {b} = {a / b:.6f}; {a} * {b} = {a * b}; {a} - {b} = {a - b}.")
        elif kind == 7:
            lines.append(f"0x{n:04X} = {n} = 0b{n:b} = 0o{n:o}")
        elif kind == 8:
            lines.append(
                f"Step {n:>6} | loss {rng.uniform(0.5, 9):.4f} | lr {rng.uniform(1e-6, 1e-3):.2e} | "
                f"{rng.randint(100, 90_000)} tok/s"
            )
        elif kind == 9:
            lines.append(
                f"The trip took {rng.randint(1, 30)}h {rng.randint(0, 59)}m {rng.randint(0, 59)}s and "
                f"cost ${x:.2f} ({rng.randint(1, 99)}% of the budget)."
            )
        elif kind == 10:
            lines.append(
                f"Meeting on {d.isoformat()} at {rng.randint(1, 12)}:{rng.choice(['00', '15', '30', '45'])}"
                f" {rng.choice(['a.m.', 'p.m.'])}, room {rng.randint(1, 9)}.{rng.randint(1, 40):02d}."
            )
        else:
            lines.append(
                f"{n} {rng.choice(['apples', 'tokens', 'steps', 'files', 'bytes', 'km', 'kg'])}, "
                f"{x:.3e}, {rng.randint(1, 99)}.{rng.randint(0, 9)}%, 1/{rng.randint(2, 64)}"
            )
    # A few calendar facts, computed rather than typed.
    for year in (2023, 2024, 2025):
        first = datetime.date(year, 1, 1)
        lines.append(
            f"{first.isoformat()} is a {DAY_NAMES[first.weekday()]}; {year} has "
            f"{366 if calendar.isleap(year) else 365} days."
        )
    return ["\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]


def whitespace_blocks(rng: random.Random) -> list[str]:
    blocks = []
    for t in range(N_TABLES):
        words = rng.sample(JSON_WORDS[:20], 5)
        if t % 2 == 0:
            rows = ["name\tqty\tprice\tnote"]
            rows += [
                f"{w}\t{rng.randint(1, 99)}\t{rng.uniform(0.5, 99):.2f}\t{rng.choice(['', 'sale', 'new'])}"
                for w in words
            ]
        else:
            rows = [f"{'item':<12}{'count':>8}{'share':>10}"]
            rows += [f"{w:<12}{rng.randint(1, 9999):>8}{rng.uniform(0, 1):>10.1%}" for w in words]
        blocks.append("\n".join(rows))
    blocks.append("def indented():\n\tif True:\n\t\treturn 'tabs'\n    # spaces after tabs\n\n\n\nend")
    blocks.append("Two  spaces.   Three spaces.    Four.\tTab.\t\tTwo tabs.  \nTrailing spaces above.   ")
    blocks.append("     leading spaces\n\t\tleading tabs\n \t mixed\n\n\n\n\nafter four blank lines")
    return blocks


def multilingual_blocks(rng: random.Random) -> list[str]:
    blocks = ["\n".join(sentences) for sentences in MULTILINGUAL.values()]
    pool = [s for sentences in MULTILINGUAL.values() for s in sentences]
    for _ in range(120):
        blocks.append(" ".join(rng.sample(pool, rng.randint(2, 5))))
    for _ in range(100):
        city, other = rng.sample(ACCENTED_CITIES, 2)
        blocks.append(
            f"We flew from {city} to {other} {rng.choice(EMOJI)} and stayed {rng.randint(2, 14)} nights."
        )
    return blocks


def build(seed: int = SEED) -> str:
    """Build the corpus text.

    Args:
        seed (int): Seed of the single `random.Random` used for every choice. Default: `SEED`.

    Returns:
        str: The whole corpus, sections separated by blank lines, ending in one newline.
    """
    rng = random.Random(seed)
    sections = [
        demo_messages(),
        prose(),
        topic_paragraphs(rng),
        CODE_SNIPPETS,
        json_docs(rng),
        markdown_docs(rng),
        number_lines(rng),
        whitespace_blocks(rng),
        multilingual_blocks(rng),
    ]
    blocks: list[str] = []
    for section in sections:
        blocks += [block.rstrip("\n") for block in section]
    return "\n\n".join(blocks) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file, write nothing")
    parser.add_argument("--out", type=Path, default=OUT_PATH, help="output path (default: %(default)s)")
    args = parser.parse_args(argv)

    text = build()
    if args.check:
        current = args.out.read_bytes() if args.out.exists() else None
        if current != text.encode("utf-8"):
            print(f"{args.out} is out of date; run python3 tools/make_corpus.py", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date ({len(text.encode())} bytes)")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote {len(text.encode())} bytes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
