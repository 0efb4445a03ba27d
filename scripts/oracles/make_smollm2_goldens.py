#!/usr/bin/env python3
"""make_smollm2_goldens.py - goldens for the real default model.

Model: ~/.cache/vllm-metal/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/setup.sh model),
sha256 b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53.

Writes tests/data/smollm2/:

  llamacpp_golden.json          llama-cpp-python (n_ctx 512, n_threads 2, greedy):
      for each of 20 prompts: text (and chat messages if chat-formatted),
      llama.cpp's prompt token ids, 32 greedy ids (argmax of the logits
      decoding one token at a time with the KV cache, never stopping at EOS;
      "eos_at" = index of the first EOS in them or null), and teacher-forced
      top-1 ids at every position of prompt+continuation from one batched
      eval (logits_all), with each position's top1-top2 logit margin so a
      test can skip near ties. For 3 prompts also the full last-prompt-position
      logits (49152 floats, 5 significant digits). For every prompt, checksums
      of the exact float32 logits (sum over i of (bits_i + 1) * (2i + 1) mod 2^64,
      bits_i the i-th float's 32 bits, i over the rows concatenated): the last
      prompt position, the 31 decode steps of the greedy run and all rows of the
      teacher-forced eval, so a test can check bit-exact agreement.
  transformers_gguf_golden.json transformers' GGUF loader (dequantized to f32):
      the same 3 prompts as the llama.cpp full logits: transformers' token
      ids, 32 greedy ids from generate(), top-1 at every position of
      prompt+continuation, full logits at the last prompt position.
  tokenizer/                    the tokenizer transformers builds from the GGUF
                                (tokenizer.save_pretrained).

Run (either part alone with --part llamacpp|transformers):
  ~/.cache/vllm-metal/venv-ref/bin/python scripts/oracles/make_smollm2_goldens.py
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(REPO, "tests", "data", "smollm2")
CACHE = os.environ.get("VLLM_METAL_CACHE", os.path.expanduser("~/.cache/vllm-metal"))
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
N_CTX = 512
N_THREADS = 2
N_GEN = 32
EOS_ID = 2          # <|im_end|> (tokenizer.ggml.eos_token_id)
FULL_LOGITS = ["chat_capital", "plain_story", "plain_code_def"]   # the 3 with full logits

LONG_TEXT = (
    "The history of computing is a story of ideas meeting machines. In the nineteenth "
    "century Charles Babbage designed the Analytical Engine, a mechanical computer that "
    "was never finished, and Ada Lovelace wrote what many consider the first program for "
    "it. A century later, Alan Turing described an abstract machine that could compute "
    "anything computable, and during the Second World War engineers built electronic "
    "machines to break codes and calculate artillery tables. The transistor, invented at "
    "Bell Labs in 1947, replaced fragile vacuum tubes; the integrated circuit put many "
    "transistors on one chip; and the microprocessor put a whole computer on one. Personal "
    "computers arrived in the 1970s and 1980s, the World Wide Web in the 1990s, and "
    "smartphones in the 2000s. Today, large language models run on graphics processors "
    "and answer questions in plain language. Summarize this history in one sentence:")

CODE_TEXT = '''import json
from dataclasses import dataclass


@dataclass
class Request:
    request_id: str
    prompt_tokens: list[int]
    max_tokens: int = 16

    def remaining(self, generated: int) -> int:
        """How many tokens may still be generated."""
        return max(0, self.max_tokens - generated)


def load_requests(path):
    with open(path) as f:
        for line in f:
            obj = json.loads(line)
'''

C_TEXT = """#include <stdio.h>

/* Return the index of the largest element of x[0..n-1]. */
static int argmax(const float *x, int n) {
\tint best = 0;
\tfor (int i = 1; i < n; i++)
\t\tif (x[i] > x[best])
\t\t\tbest = i;
\treturn best;
}

int main(void) {
\tfloat logits[4] = {0.1f, 2.5f, -1.0f, 0.7f};
\tprintf("%d\\n", """

# (name, messages or None, text-if-plain)
PROMPTS = [
    ("chat_capital", [{"role": "user", "content": "What is the capital of France?"}], None),
    ("chat_hello", [{"role": "user", "content": "Hi!"}], None),
    ("chat_system_pirate", [{"role": "system", "content": "You are a pirate. Answer like one."},
                            {"role": "user", "content": "How do I make a cup of tea?"}], None),
    ("chat_multiturn", [{"role": "user", "content": "My name is Ana."},
                        {"role": "assistant", "content": "Nice to meet you, Ana! How can I help you today?"},
                        {"role": "user", "content": "What is my name, and how many letters does it have?"}], None),
    ("chat_code", [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}], None),
    ("chat_math", [{"role": "user", "content": "What is 17 * 23? Think step by step."}], None),
    ("chat_french", [{"role": "user", "content": "Peux-tu m'expliquer pourquoi le ciel est bleu ?"}], None),
    ("chat_long", [{"role": "user", "content": LONG_TEXT}], None),
    ("chat_list", [{"role": "user", "content": "List three fruits that are red."}], None),
    ("plain_story", None, "Once upon a time, in a small village by the sea, there lived"),
    ("plain_code_def", None, "def fibonacci(n):\n    "),
    ("plain_code_python", None, CODE_TEXT),
    ("plain_code_c", None, C_TEXT),
    ("plain_one_word", None, "Hello"),
    ("plain_chinese", None, "人工智能是计算机科学的一个分支，它"),
    ("plain_german_umlauts", None, "Die Straße führt über die Brücke nach Köln, wo"),
    ("plain_russian", None, "Москва — столица России. Это город, в котором"),
    ("plain_emoji_json", None, '{"name": "Zoë", "mood": "😀", "tags": ["café", "naïve"], "count": 42}\nThe JSON above describes'),
    ("plain_numbers_whitespace", None, "1, 2, 3, 5, 8, 13, 21,   34,\t55,\n\n  89, 144,"),
    ("plain_long_history", None, LONG_TEXT),
]


def fmt(x, digits):
    return float(f"%.{digits}g" % x)


def model_path():
    p = os.path.join(CACHE, GGUF_FILE)
    if not os.path.isfile(p):
        sys.exit(f"{p} missing: run scripts/setup.sh model")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != GGUF_SHA256:
        sys.exit(f"{p}: sha256 mismatch")
    return p


def render_chat(template, messages):
    """The GGUF's own chat template, rendered with jinja2 (add_generation_prompt)."""
    import jinja2
    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token="<|im_start|>", eos_token="<|im_end|>")


def prompt_texts(template):
    out = []
    for name, messages, text in PROMPTS:
        if messages is not None:
            text = render_chat(template, messages)
        out.append((name, messages, text))
    return out


def bitsum(arr):
    bits = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    weights = np.arange(bits.size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        return f"{int(np.sum((bits + np.uint64(1)) * weights, dtype=np.uint64)):016x}"


def top1_and_margin(scores):
    """scores (n, vocab) -> argmax ids and top1-top2 margins."""
    part = np.partition(scores, -2, axis=1)
    return scores.argmax(axis=1).tolist(), (part[:, -1] - part[:, -2]).tolist()


def run_llamacpp(path):
    import llama_cpp
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=N_CTX, n_threads=N_THREADS, n_threads_batch=N_THREADS,
                n_batch=N_CTX, logits_all=True, seed=0, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    res = {"model": GGUF_FILE, "sha256": GGUF_SHA256,
           "oracle": f"llama-cpp-python {llama_cpp.__version__}",
           "settings": {"n_ctx": N_CTX, "n_threads": N_THREADS, "n_batch": N_CTX,
                        "sampling": "greedy argmax of raw logits, no EOS stop",
                        "tokenize": "llm.tokenize(text, add_bos=True (add_special: the GGUF says no BOS), special=True)"},
           "n_vocab": llm.n_vocab(), "eos_token_id": EOS_ID, "prompts": []}
    for name, messages, text in prompt_texts(template):
        ptoks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        assert len(ptoks) + N_GEN <= N_CTX, (name, len(ptoks))
        # greedy, one token at a time with the KV cache
        llm.reset()
        llm.eval(ptoks)
        last_prompt_logits = np.array(llm.scores[len(ptoks) - 1], dtype=np.float32)
        gen, decode_rows = [], []
        for i in range(N_GEN):
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            if i > 0:
                decode_rows.append(row)
            tok = int(np.argmax(row))
            gen.append(tok)
            if i + 1 < N_GEN:
                llm.eval([tok])
        # teacher forced: one batch over prompt + continuation
        all_toks = ptoks + gen
        llm.reset()
        llm.eval(all_toks)
        scores = np.array(llm.scores[:len(all_toks)], dtype=np.float32)
        tf_top1, tf_margin = top1_and_margin(scores)
        entry = {"name": name, "chat": messages is not None}
        if messages is not None:
            entry["messages"] = messages
        entry.update({
            "text": text,
            "prompt_tokens": ptoks,
            "greedy_tokens": gen,
            "greedy_text": llm.detokenize(gen, special=True).decode("utf-8", errors="replace"),
            "eos_at": gen.index(EOS_ID) if EOS_ID in gen else None,
            "teacher_forced_top1": tf_top1,
            "teacher_forced_margin": [fmt(m, 4) for m in tf_margin],
            "logits_bitsum": {"last_prompt": bitsum(last_prompt_logits),
                              "greedy_decode": bitsum(np.stack(decode_rows)),
                              "teacher_forced": bitsum(scores)},
        })
        # greedy (incremental) vs teacher-forced (batched) disagreements: near ties
        disagree = [i for i in range(len(gen))
                    if tf_top1[len(ptoks) - 1 + i] != gen[i]]
        entry["greedy_vs_teacher_forced_mismatch"] = disagree
        if name in FULL_LOGITS:
            entry["last_prompt_logits"] = [fmt(v, 5) for v in last_prompt_logits.tolist()]
        res["prompts"].append(entry)
        print(f"{name:26s} prompt {len(ptoks):3d} tok  eos_at {entry['eos_at']}  "
              f"mismatch {disagree}  min margin {min(tf_margin):.3g}  {entry['greedy_text'][:60]!r}")
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "llamacpp_golden.json"), "w") as f:
        json.dump(res, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def run_transformers(path):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(N_THREADS)
    d, fn = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=fn)
    # transformers' GGUF converter ignores tokenizer.ggml.pre = "smollm" and
    # builds a plain ByteLevel pre-tokenizer. The real SmolLM2 tokenizer.json
    # (and llama.cpp's "smollm" pre-tokenizer) split digits first; without it
    # whitespace runs before digits tokenize differently ("   34": llama.cpp
    # "ĠĠĠ","3","4"; as built "ĠĠ","Ġ","3","4"). Restore it, so the saved
    # tokenizer matches llama.cpp on all 20 prompts (checked below).
    from tokenizers import pre_tokenizers
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok_dir = os.path.join(OUT, "tokenizer")
    os.makedirs(tok_dir, exist_ok=True)
    tok.save_pretrained(tok_dir)
    # compact tokenizer.json (the pretty one is 3.5 MB); chat template also in
    # tokenizer_config.json (older layout) beside chat_template.jinja (newer)
    tok.backend_tokenizer.save(os.path.join(tok_dir, "tokenizer.json"), pretty=False)
    cfg_path = os.path.join(tok_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    for k in ("is_local", "local_files_only"):     # machine-local noise
        cfg.pop(k, None)
    cfg["chat_template"] = tok.chat_template
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fn, dtype=torch.float32).eval()
    template = tok.chat_template
    res = {"model": GGUF_FILE, "sha256": GGUF_SHA256,
           "oracle": f"transformers {transformers.__version__} GGUF loader (dequantized, f32), "
                     f"torch {torch.__version__}",
           "settings": {"tokenize": "tokenizer(text, add_special_tokens=False); tokenizer as built "
                                    "from the GGUF plus the Digits(individual_digits) pre-tokenizer "
                                    "that transformers' GGUF converter leaves out",
                        "generate": "do_sample=False, 32 new tokens, EOS not stopping"},
           "prompts": []}
    # the HF tokenizer's ids for all 20 prompts (compare with llamacpp_golden.json)
    res["tokenized"] = [{"name": name, "tokens": tok(text, add_special_tokens=False)["input_ids"]}
                        for name, _, text in prompt_texts(template)]
    lc_path = os.path.join(OUT, "llamacpp_golden.json")
    if os.path.exists(lc_path):
        with open(lc_path) as f:
            lc = {p["name"]: p["prompt_tokens"] for p in json.load(f)["prompts"]}
        for t in res["tokenized"]:
            same = lc.get(t["name"]) == t["tokens"]
            print(f"tokenizer {t['name']:26s} {'same as' if same else 'DIFFERS from'} llama.cpp")
    for name, messages, text in prompt_texts(template):
        if name not in FULL_LOGITS:
            continue
        if messages is not None:
            text2 = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert text2 == text, (name, text2, text)
        ptoks = tok(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ptoks])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=N_GEN, min_new_tokens=N_GEN, eos_token_id=None,
                                 pad_token_id=EOS_ID, temperature=None, top_p=None, top_k=None)
            all_toks = gen[0].tolist()
            logits = model(torch.tensor([all_toks])).logits[0].float().numpy()
        top1, margin = top1_and_margin(logits)
        gen_ids = all_toks[len(ptoks):]
        entry = {"name": name, "chat": messages is not None}
        if messages is not None:
            entry["messages"] = messages
        entry.update({
            "text": text, "prompt_tokens": ptoks, "greedy_tokens": gen_ids,
            "greedy_text": tok.decode(gen_ids),
            "teacher_forced_top1": top1,
            "teacher_forced_margin": [fmt(m, 4) for m in margin],
            "last_prompt_logits": [fmt(v, 5) for v in logits[len(ptoks) - 1].tolist()],
        })
        res["prompts"].append(entry)
        print(f"{name:26s} prompt {len(ptoks):3d} tok  {entry['greedy_text'][:70]!r}")
    with open(os.path.join(OUT, "transformers_gguf_golden.json"), "w") as f:
        json.dump(res, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["all", "llamacpp", "transformers"], default="all")
    args = ap.parse_args()
    path = model_path()
    if args.part in ("all", "llamacpp"):
        run_llamacpp(path)
    if args.part in ("all", "transformers"):
        run_transformers(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
