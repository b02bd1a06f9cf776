"""Train the small tokenizer fixtures used by pyft-core's tokenizer parity tests.

Everything is generated here (no downloads): a deterministic multilingual training text, then a handful of
`tokenizer.json` files trained with the HF `tokenizers` package, each shaped like a real model family:

- ``gpt2.json``: byte-level BPE, ``ByteLevel(add_prefix_space=True, use_regex=True)``, ByteLevel post-processor
  with ``trim_offsets=True``, ``<|endoftext|>`` special.
- ``llama3.json``: ``Sequence[Split(Llama-3 regex), ByteLevel(use_regex=False)]``, ``ignore_merges=True``,
  Llama-3 + ChatML special tokens, ``<|begin_of_text|> $A`` template.
- ``qwen2.json``: NFC normalizer, ``Split(Qwen2 regex)`` (single-digit ``\\p{N}``), ChatML specials and two
  non-special added tokens (one ``normalized=True``).
- ``o200k.json``: a GPT-4o-style Split regex the fast path does not hand-scan (exercises the generic regex path).
- ``spm_bpe.json``: SentencePiece-style BPE, ``Metaspace(prepend_scheme="first", split=True)`` pre-tokenizer,
  ``byte_fallback``, ``<s> $A`` template.
- ``spm_llama.json``: Llama-2 / Mistral-v0.1 style: the ``Sequence[Prepend("▁"), Replace(" ", "▁")]``
  normalizer and no pre-tokenizer (each text piece is one word), whitespace-run merges (``▁▁``, ``▁▁▁▁``) and
  byte-token merges, ``fuse_unk``, chat tokens with ``normalized=False``.
- ``wordpiece.json``: BERT-style WordPiece (HF fallback path).

Also writes ``edge_cases.json`` (a list of tricky strings), ``expected_ids.json`` (the Python package's ids for
every fixture and edge case, so the Rust tests also check the Python package, not only the Rust crate) and
``chat_sample.txt`` (ChatML conversations, used by the parity test and the criterion bench).

Run from the repo root:  /work/main/.venv/bin/python tools/compat/make_tokenizer_fixtures.py [NAME ...]

Training is not bit-for-bit reproducible (the BPE trainer breaks ties differently from run to run), so the
committed ``*.json`` files are the fixtures: name the ones to rewrite (e.g. ``spm_llama``);
``edge_cases.json`` and ``expected_ids.json`` are always rewritten, from the fixture files on disk.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers

OUT = Path(__file__).resolve().parents[2] / "rust" / "pyft-core" / "tests" / "data" / "tokenizers"

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

WORDS = """the of and to in is you that it he was for on are as with his they at be this have from or one had by
word but not what all were we when your can said there use an each which she do how their if will up other about
out many then them these so some her would make like him into time has look two more write go see number no way
could people my than first water been call who oil its now find long down day did get come made may part model
data training loss gradient tokenizer adapter layer weight batch epoch learning rate optimizer checkpoint merge
Python Rust GPU CUDA memory tensor matrix vector attention transformer sequence prompt answer question assistant
user system function return value error result file path config dataset shuffle sample token vocabulary""".split()

NAMES = ["Alice", "Bob", "Charlie", "Dana", "O'Brien", "McDonald", "Zoë", "José", "François", "Müller"]
CONTRACTIONS = ["it's", "IT'S", "It'S", "we'll", "WE'LL", "They'Re", "I've", "you'D", "I'm", "don't", "DON'T",
                "can't", "she'd", "'tis", "rock'n'roll", "o'clock", "y'all", "ma'am"]
NON_ASCII = [
    "café", "naïve", "résumé", "Ångström", "Straße", "Đà Nẵng", "tiếng Việt", "português", "ñandú", "Ærøskøbing",
    "日本語のテキスト", "東京タワー", "中文分词测试", "机器学习模型", "한국어 문장입니다", "ひらがなカタカナ",
    "مرحبا بالعالم", "اللغة العربية", "שלום עולם", "Привет, мир", "Ελληνικά", "हिन्दी भाषा", "ภาษาไทย",
    "😀", "🚀🔥", "👩‍💻", "👍🏽", "🇫🇷🇯🇵", "❤️", "∑x²≤∞", "→ ← ↑", "½ ¾ ⅓", "①②③", "Ⅻ", "٣٤٥", "१२३", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\u00a0nbsp\u00a0", "zero\u200bwidth", "\u3000全角スペース", "ﬁligature", "ſtraße",
]
CODE = [
    "def f(x):\n    return x**2 + 1\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "fn main() {\n    println!(\"{}\", 42);\n}\n",
    '{"key": "value", "n": [1, 2, 3], "ok": true}',
    "SELECT id, name FROM users WHERE age >= 21;\r\n",
    "    if err != nil {\n        return err\n    }\n",
    "x = [i*i for i in range(10)]  # squares\n",
    "<div class=\"a\">Hello &amp; welcome</div>",
    "$ cargo test -p pyft-core -- --nocapture\n",
]


def sentence(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(4, 16)):
        r = rng.random()
        if r < 0.62:
            w = rng.choice(WORDS)
            parts.append(w.capitalize() if rng.random() < 0.1 else w)
        elif r < 0.7:
            parts.append(rng.choice(NAMES))
        elif r < 0.78:
            parts.append(rng.choice(CONTRACTIONS))
        elif r < 0.86:
            parts.append(rng.choice(NON_ASCII))
        elif r < 0.93:
            parts.append(str(rng.choice([rng.randint(0, 9), rng.randint(10, 999), rng.randint(1000, 10**9)])))
        else:
            parts.append(rng.choice(["3.14", "1e-4", "2024-06-01", "12:30", "$19.99", "50%", "v0.1.0", "#42"]))
    s = " ".join(parts)
    s = s[0].upper() + s[1:]
    return s + rng.choice([".", "!", "?", "...", ":", ";", " —", ""])


def paragraph(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.2:
        return rng.choice(CODE)
    sep = rng.choice([" ", "  ", "\n", "\n\n", "\t", "   ", "\r\n"])
    return sep.join(sentence(rng) for _ in range(rng.randint(1, 5)))


def training_text(rng: random.Random, n: int) -> list[str]:
    return [paragraph(rng) for _ in range(n)]


def chat_sample(rng: random.Random, n: int) -> str:
    """ChatML conversations, one per blank-line-separated block."""
    convs = []
    for _ in range(n):
        turns = ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>"]
        for _ in range(rng.randint(1, 3)):
            turns.append(f"<|im_start|>user\n{paragraph(rng)}<|im_end|>")
            answer = "\n\n".join(paragraph(rng) for _ in range(rng.randint(1, 4)))
            turns.append(f"<|im_start|>assistant\n{answer}<|im_end|>")
        convs.append("\n".join(turns))
    return "\n\n\n".join(convs) + "\n"


EDGE_CASES = [
    "", " ", "  ", "\t", "\n", "\r\n", "\r", "\n\n\n", " \n \n ", "\t\t  \t", "   leading", "trailing   ",
    "a  b   c    d", "x\r\ny\r\n\r\nz", "word\n", "\nword", "  \n  word", "hello   world", "hello   123",
    "hello   !!!", "a \t b", "1234567890", "3.14159 2.71828", "12 345 6789 00001", "0x1F 0b1010 1_000_000",
    "1,234,567.89", "ab12cd34", "abc123def", "I'm, you're, he's, we've, they'll, she'd, it't",
    "I'M YOU'RE HE'S WE'VE THEY'LL SHE'D", "i'M yOu'Re", "'s 'S 'll 'LL 'Ll", "''s", "'", "''", "'x", "a'",
    "ſ's 'ſ 'ſt", "don't stop", "O'Neil's", "hello<|im_start|>", "<|im_start|>user\nhi<|im_end|>",
    "<|im_end|><|im_start|>", "<|im_start|><|im_start|>", "<|im_start", "im_start|>", "< |im_start|>",
    "<|endoftext|>", "text<|endoftext|>text", " <|endoftext|> ", "<|begin_of_text|>Hi<|eot_id|>",
    "<|start_header_id|>assistant<|end_header_id|>\n\n", "<tool_call>{\"a\": 1}</tool_call>",
    "<think>\nhmm\n</think>", "<|im_start|>\u0301", "supercalifragilisticexpialidocious" * 3,
    "a" * 300, " " * 100 + "x", "=" * 80, "-" * 64 + "\n" + "#" * 10, "ab" * 200, "🙂" * 40,
    "🙂🙃🙂", "👨‍👩‍👧‍👦 family", "🏳️‍🌈", "a\u0301", "e\u0301 café", "\u0041\u030a", "Å", "한국어", "\u1100\u1161\u11a8",
    "日本語", "中文。标点，符号！", "مرحبا", "שלום", "Ελλάδα", "ⅨⅩ", "²³¹", "٠١٢", "𝟘𝟙𝟚", "\u00a0", "\u2028\u2029",
    "\u0085", "a\u0085b", "\u000b\u000c", "a\u000bb", "\u200b", "\u2003em\u2003space", "\u3000", "\ufeffbom",
    "tab\tsep\tvalues", "mixed  \t\n  whitespace\n\n  end  ", "\x00\x01\x02", "\x7f", "\U0010ffff", "\ue000",
    "\ufffd", "𐍈𐌰", "A.B.C.", "e.g. i.e.", "...", "!?!?", "(a)[b]{c}", "a/b\\c", "@user #tag $var %mod",
    "https://example.com/path?q=1&r=2", "foo@bar.com", "C++ & C#", "print('hi')\n", "  def f():\n\treturn 1\n",
    "<|im_start|>user\n  spaced  <|im_end|>\n<|im_start|>assistant\n\n\n", "x <|im_end|>", "x\n<|im_end|>",
    "ß ẞ ﬀ ﬃ", "İstanbul ı", "ǅ ǈ ǋ", "ʰʲʷ", "ー〜", "ᄀᄁ", "ㄱㄴ", "ｶﾀｶﾅ", "ＡＢＣ１２３", "\u0600\u0601",
    "a\u0300\u0301\u0302", "\u0300start", "ā ē ī ō ū", "Tiếng Việt có dấu", "Ελληνικά και λατινικά mixed",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!",
    "▁", "▁▁x", "x▁ ▁y", " ▁", "<s>", "<s> hi</s>", "  <s>  x", "a<unk>b",
    "<|user|>\nHi<|end|>\n<|assistant|>\n",
    " <|user|> ", "\n\n  \n", "x\n y", "    four", "        eight spaces", "\t\tindent",
]


#: Fixture names to write (all when empty); see the module docstring.
ONLY: set[str] = set()


def write(tok: Tokenizer, name: str, edit=None) -> None:
    if ONLY and name not in ONLY:
        return
    data = json.loads(tok.to_str())
    if edit is not None:
        edit(data)
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    Tokenizer.from_str(text)  # the edited file must still load
    (OUT / f"{name}.json").write_text(text, encoding="utf-8")
    print(f"{name}.json: {len(text.encode()) // 1024} KiB, vocab {tok.get_vocab_size(True)}")


def train_byte_level(pre_tokenizer, corpus, vocab_size, specials, normalizer=None) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=24,
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20240601)
    corpus = training_text(rng, 6000)

    # GPT-2 style: ByteLevel pre-tokenizer with its built-in regex and a prefix space.
    gpt2 = train_byte_level(pre_tokenizers.ByteLevel(add_prefix_space=True), corpus, 2500, ["<|endoftext|>"])
    gpt2.post_processor = processors.ByteLevel(trim_offsets=True)
    write(gpt2, "gpt2")

    # Llama-3 style.
    llama_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eot_id|>", "<|im_start|>", "<|im_end|>"]
    llama3 = train_byte_level(
        pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]),
        corpus, 3000, llama_specials,
    )
    llama3.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A:0 <|begin_of_text|> $B:1",
            special_tokens=[("<|begin_of_text|>", llama3.token_to_id("<|begin_of_text|>"))],
        ),
    ])

    def llama3_edit(data):
        data["model"]["ignore_merges"] = True

    write(llama3, "llama3", llama3_edit)

    # Qwen2 style: NFC, single-digit numbers, ChatML, non-special added tokens.
    qwen2 = train_byte_level(
        pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]),
        corpus, 3000, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], normalizer=normalizers.NFC(),
    )
    qwen2.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                      AddedToken("</tool_call>", special=False, normalized=False),
                      AddedToken("<think>", special=False, normalized=True)])
    qwen2.post_processor = processors.ByteLevel(trim_offsets=False)
    write(qwen2, "qwen2")

    # A Split regex that the fast path has no hand-written scanner for.
    o200k = train_byte_level(
        pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(O200K_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]),
        corpus, 2000, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    write(o200k, "o200k")

    # SentencePiece-style BPE with byte fallback (falls back to HF).
    spm = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    spm.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    spm.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    spm_trainer = trainers.BpeTrainer(vocab_size=1500, min_frequency=2, show_progress=False,
                                      special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], limit_alphabet=200)
    spm.train_from_iterator(corpus, spm_trainer)
    spm.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    write(spm, "spm_bpe")

    # Llama-2 style: trained like spm_bpe (SentencePiece never merges across words), then saved with the
    # normalizer that Llama-2 / Mistral-v0.1 / Phi-3 files carry, plus merges for runs of spaces and bytes.
    llama2 = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    llama2.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    llama2.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=1800, min_frequency=2, show_progress=False,
        special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], limit_alphabet=150))
    chat = ["<|user|>", "<|assistant|>", "<|end|>"]
    llama2.add_special_tokens([AddedToken(t, normalized=False) for t in chat])
    llama2.add_tokens([AddedToken("<tool>", normalized=False, special=False)])
    llama2.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    llama2.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                        decoders.Strip(" ", 1, 0)])

    def llama2_edit(data):
        data["pre_tokenizer"] = None
        data["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
        model = data["model"]
        vocab, merges = model["vocab"], model["merges"]
        extra = [("▁", "▁"), ("▁▁", "▁▁"), ("▁▁", "▁"), ("▁▁▁▁", "▁▁▁▁"), ("<0x0A>", "<0x0A>"),
                 ("▁", "<0x0A>"), ("▁▁", "▁return"), ("<0xF0>", "<0x9F>")]
        for a, b in extra:
            for t in (a, b):
                assert t in vocab, t
            if a + b not in vocab:
                vocab[a + b] = max(max(vocab.values()), *(t["id"] for t in data["added_tokens"])) + 1
            merges.insert(len(merges) // 3, [a, b])

    write(llama2, "spm_llama", llama2_edit)

    # BERT-style WordPiece (falls back to HF).
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp_trainer = trainers.WordPieceTrainer(vocab_size=1500, show_progress=False,
                                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    wp.train_from_iterator(corpus, wp_trainer)
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", wp.token_to_id("[CLS]")), ("[SEP]", wp.token_to_id("[SEP]"))]
    )
    wp.decoder = decoders.WordPiece()
    write(wp, "wordpiece")

    (OUT / "edge_cases.json").write_text(json.dumps(EDGE_CASES, ensure_ascii=False, indent=0), encoding="utf-8")
    expected = {}
    for name in ["gpt2", "llama3", "qwen2", "o200k", "spm_bpe", "spm_llama", "wordpiece"]:
        tok = Tokenizer.from_file(str(OUT / f"{name}.json"))
        expected[name] = {
            "with_special_tokens": [e.ids for e in tok.encode_batch(EDGE_CASES, add_special_tokens=True)],
            "without_special_tokens": [e.ids for e in tok.encode_batch(EDGE_CASES, add_special_tokens=False)],
        }
    (OUT / "expected_ids.json").write_text(json.dumps(expected, separators=(",", ":")), encoding="utf-8")
    (OUT / "chat_sample.txt").write_text(chat_sample(random.Random(7), 120), encoding="utf-8", newline="")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"total {total // 1024} KiB in {OUT}")


if __name__ == "__main__":
    ONLY.update(sys.argv[1:])
    main()
