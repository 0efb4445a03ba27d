#!/usr/bin/env python3
"""tokenizer_corpus.py - a deterministic corpus of test strings for the tokenizer.

Standard library only. `corpus(n, seed, specials)` returns n strings mixing
English prose, multilingual text, CJK, emoji and ZWJ sequences, code, runs of
spaces/tabs/newlines, digits, contractions (upper and lower case, with the
Unicode long s), special tokens inline, and the empty string.  The same seed
gives the same strings on every machine (the sources are all literals here).

    python3 scripts/tokenizer_corpus.py [N] [SEED]    # print N strings as JSON
"""
import json
import random
import sys

ENGLISH = """The quick brown fox jumps over the lazy dog. It's a truth universally
acknowledged that a single man in possession of a good fortune must be in want of a wife.
I'll be there at 10:30, won't you? They've said they'd come, but we're not sure.
Call me Ishmael. Some years ago - never mind how long precisely - having little or no money
in my purse, and nothing particular to interest me on shore, I thought I would sail about a
little and see the watery part of the world. THE END. Don't SHOUT! He said "hello" and left;
she replied: 'goodbye'. Mr. O'Neil's dog's bone costs $3.50 (or 3,50 EUR) - 100% sure.
Large language models are trained on trillions of tokens; tokenization splits text into
sub-word units using byte-pair encoding. Paged attention stores the KV cache in fixed-size
blocks, which lets the scheduler batch many requests together without fragmentation.
In 1969, Apollo 11 landed on the Moon. The population was 7,900,000,000 in 2021.
e-mail: someone@example.com, URL: https://example.org/path?q=1&r=2#frag
""".split()

MULTILINGUAL = [
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. Straße, Größe, Äpfel.",
    "¿Dónde está la biblioteca? ¡Olé! El niño comió piña.",
    "Привет, как дела? Съешь же ещё этих мягких французских булок.",
    "Γειά σου Κόσμε! Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "مرحبا بالعالم، كيف حالك؟ هذا نص عربي.",
    "שלום עולם, מה שלומך?",
    "नमस्ते दुनिया, आप कैसे हैं? हिन्दी पाठ।",
    "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Xin chào thế giới! Tiếng Việt có dấu: ặ ẫ ữ ợ.",
    "Merhaba dünya! İstanbul, ığdır, ŞEKER.",
    "Zażółć gęślą jaźń. Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "你好，世界！今天天气很好，我们去公园散步吧。人工智能正在改变世界。",
    "こんにちは世界。東京は日本の首都です。カタカナとひらがなと漢字。",
    "안녕하세요 세계! 한국어 문장입니다. 대한민국 서울특별시.",
    "ሰላም ለዓለም። ქართული ენა. Հայերեն լեզու. ᠮᠣᠩᠭᠣᠯ",
    "Ça va? Ñandú. Øresund. Ångström. Ægir. þorn. ß ẞ ﬁ ﬂ",
    "𝕳𝖊𝖑𝖑𝖔 𝓦𝓸𝓻𝓵𝓭 ℌ𝔢𝔩𝔩𝔬 ① ② ③ Ⅻ ½ ¾ ² ³ ٣ ४ ৫ ๖",
    "e\u0301 a\u0300 o\u0302 n\u0303 (combining) \u00e9 \u00e0 (precomposed) \u1e9b\u0323 \u212b \u2126",
    "\u200b zero\u200bwidth \u200c\u200d \ufeff BOM \u00a0nbsp \u3000ideographic \u2028 \u2029 \u0085",
]

EMOJI = [
    "😀", "😂", "🥲", "👍", "👍🏽", "❤️", "🔥", "🎉", "🇺🇸", "🇯🇵", "🏳️‍🌈",
    "👨‍👩‍👧‍👦", "👩🏾‍💻", "🧑‍🚀", "🤷‍♂️", "🫠", "🦀", "🐍", "☕", "⌚", "✔️", "#️⃣", "1️⃣",
]

CODE = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "int main(int argc, char **argv) {\n\tprintf(\"%d\\n\", argc);\n\treturn 0;\n}\n",
    "for (size_t i = 0; i < n; i++) { y[i] += a * x[i]; }",
    "<html>\n  <body class=\"main\">&nbsp;&lt;tag&gt;</body>\n</html>",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
    "    // indented comment\r\n\tx = y ** 2 // 3 % 4; z != w && q || !p;",
    "fn main() -> Result<(), Box<dyn Error>> { let v: Vec<u8> = vec![0xff; 16]; Ok(()) }",
    "$ git commit -m 'fix: off-by-one' && make -j8 test 2>&1 | tee log.txt",
    "lambda x: x**2 if x>0 else -x  # comment with émoji 🐍",
]

CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M",
                "'LL", "'D", "'ſ", "’s", "''", "'", "n't", "N'T"]

WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\t\t", "    ",
              " \t \n", "\u00a0", "\u3000", "\u2009", "\f", "\v", "\n\n\n   "]


def _random_unicode(rng):
    # Code points from a spread of blocks (no surrogates, no noncharacters).
    blocks = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff),
              (0x900, 0x97f), (0xe00, 0xe7f), (0x1100, 0x11ff), (0x3040, 0x30ff),
              (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0x1f300, 0x1faff), (0x20000, 0x2a6df),
              (0x0, 0x1f), (0x2000, 0x206f), (0xfe00, 0xfe0f), (0x300, 0x36f), (0x1d400, 0x1d7ff)]
    lo, hi = rng.choice(blocks)
    return chr(rng.randint(lo, hi))


def _digits(rng):
    k = rng.randint(1, 14)
    s = "".join(rng.choice("0123456789") for _ in range(k))
    r = rng.random()
    if r < 0.2:
        s = s + "." + str(rng.randint(0, 999))
    elif r < 0.3:
        s = "-" + s
    elif r < 0.4:
        s = "{:,}".format(int(s))
    return s


def _piece(rng, specials):
    r = rng.random()
    if r < 0.30:
        i = rng.randrange(len(ENGLISH))
        return " ".join(ENGLISH[i:i + rng.randint(1, 12)])
    if r < 0.42:
        s = rng.choice(MULTILINGUAL)
        a = rng.randrange(len(s))
        return s[a:a + rng.randint(1, 40)]
    if r < 0.50:
        return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4)))
    if r < 0.58:
        s = rng.choice(CODE)
        a = rng.randrange(len(s))
        return s[a:a + rng.randint(5, 80)]
    if r < 0.66:
        return rng.choice(WHITESPACE) * rng.randint(1, 3)
    if r < 0.72:
        return _digits(rng)
    if r < 0.78:
        return rng.choice(["I", "you", "he", "it", "WE", "They", "don", "can", "Bob"]) + \
            rng.choice(CONTRACTIONS)
    if r < 0.84 and specials:
        return rng.choice(specials)
    if r < 0.92:
        return "".join(_random_unicode(rng) for _ in range(rng.randint(1, 8)))
    return rng.choice(ENGLISH).upper() if rng.random() < 0.5 else rng.choice(ENGLISH)


def corpus(n=5000, seed=1234, specials=()):
    """n deterministic test strings; `specials` are added-token strings to mix in."""
    rng = random.Random(seed)
    specials = list(specials)
    out = ["", " ", "  ", "\n", "a", "Hello world", "Hello, world!", "hello  world",
           " leading space", "trailing space ", "\t\ttabs\tand\nnewlines\n\n\n", "1234567890",
           "I'm you're they've we'll she'd it's DON'T", "👨‍👩‍👧‍👦", "你好世界", "▁already▁meta",
           "<0x41>", "<unk>"]
    for s in specials:
        out += [s, " " + s + " ", "x" + s + "y", s + s, "  " + s + "\n", "hi " + s + " there"]
    while len(out) < n:
        k = rng.randint(1, 8)
        parts = []
        for _ in range(k):
            parts.append(_piece(rng, specials))
            if rng.random() < 0.6:
                parts.append(rng.choice([" ", " ", " ", "", "\n", "  ", ", ", ". "]))
        out.append("".join(parts))
    return out[:n]


def english_text(n_bytes=1 << 20, seed=7):
    """English-like prose for throughput benchmarks."""
    rng = random.Random(seed)
    words, size = [], 0
    while size < n_bytes:
        w = rng.choice(ENGLISH)
        words.append(w)
        size += len(w) + 1
        if rng.random() < 0.05:
            words.append("\n")
    return " ".join(words)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1234
    json.dump(corpus(n, seed), sys.stdout, ensure_ascii=False, indent=1)
    print()
