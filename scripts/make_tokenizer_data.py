#!/usr/bin/env python3
"""make_tokenizer_data.py - builds the tokenizer files under tests/data/tokenizers/.

Needs `tokenizers==0.21.0`, `gguf` and `numpy` (a throwaway venv is fine:
python3 -m venv /tmp/tv && /tmp/tv/bin/pip install tokenizers==0.21.0 gguf numpy).
Deterministic for a given tokenizers version (training is single-threaded here).

Outputs (each small):
  smollm2/tokenizer.json     SmolLM2-135M's real vocab + merges, read from the GGUF in the
                             cache, laid out as HF's SmolLM2 tokenizer.json is (Digits +
                             ByteLevel pre-tokenizer, 17 special tokens)
  llama3/tokenizer.json      Llama-3-style byte-level BPE trained here: Llama-3 Split regex,
                             ignore_merges, <|begin_of_text|> template, 256 special tokens
  qwen2/tokenizer.json       Qwen2-style: NFC, Qwen2 Split regex, special + non-special
                             added tokens (lstrip/rstrip/single_word variants)
  spm/tokenizer.json         Llama-2-style SentencePiece BPE: Prepend+Replace normalizer,
                             byte_fallback, fuse_unk, <s> template, Replace/ByteFallback/
                             Fuse/Strip decoder
  spm_metaspace/tokenizer.json  the same vocab, Mistral-style Metaspace(prepend_scheme=first)
  *.gguf                     tokenizer-only GGUF files of the same vocabularies
                             (llama3 -> "gpt2"/"llama-bpe", qwen2 -> "gpt2"/"qwen2",
                             spm -> "llama" with scores and token types)
  spm_gguf/tokenizer.json    what HF builds from spm.gguf (merges derived from scores)
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenizer_corpus  # noqa: E402

from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders, normalizers, \
    processors, Regex, AddedToken  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "tokenizers")
CACHE = os.environ.get("VLLM_METAL_CACHE", os.path.expanduser("~/.cache/vllm-metal"))
GGUF_MODEL = os.path.join(CACHE, "SmolLM2-135M-Instruct.Q4_1.gguf")

GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
             r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
            r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def training_text():
    lines = tokenizer_corpus.corpus(40000, seed=99)
    lines.append(tokenizer_corpus.english_text(1 << 19, seed=3))
    return lines


def save(tok, name):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"), pretty=False)
    print("wrote", name, os.path.getsize(os.path.join(d, "tokenizer.json")), "bytes")


def write_json(obj, name):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
    print("wrote", name)


def train_bytelevel(regex, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tr = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer=tr)
    tok.decoder = decoders.ByteLevel()
    return tok


def smollm2():
    import gguf
    r = gguf.GGUFReader(GGUF_MODEL)
    f = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    f = r.fields["tokenizer.ggml.merges"]
    merges = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    save(tok, "smollm2")


def llama3():
    tok = train_bytelevel(LLAMA3_RE, 6000)
    n = tok.get_vocab_size()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    specials += ["<|reserved_special_token_%d|>" % i for i in range(3, 256 - len(specials) + 3)]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", n)])])
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = True
    # Llama-3's file writes merges as "a b" strings; keep that format here.
    j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    write_json(j, "llama3")


def qwen2():
    tok = train_bytelevel(QWEN2_RE, 6000)
    tok.normalizer = normalizers.NFC()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]])
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                    AddedToken("</tool_call>", special=False, normalized=False),
                    AddedToken("<|fim_prefix|>", special=False, normalized=False, lstrip=True),
                    AddedToken("<|fim_suffix|>", special=False, normalized=False, rstrip=True),
                    AddedToken("<think>", special=False, normalized=True),
                    AddedToken("[WORD]", special=False, normalized=False, single_word=True)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    save(tok, "qwen2")  # merges saved in the ["a", "b"] pair format


def spm():
    # Train on Metaspace-split words, then lay the result out as Llama-2's file is.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tr = trainers.BpeTrainer(vocab_size=4000, show_progress=False, limit_alphabet=400)
    tok.train_from_iterator(training_text(), trainer=tr)
    j = json.loads(tok.to_str())
    trained = sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for t, _ in trained:
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = j["model"]["merges"]
    special = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True} for t, i in list(vocab.items())[:3]]
    llama2 = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": special,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    write_json(llama2, "spm")
    mistral = json.loads(json.dumps(llama2))
    mistral["normalizer"] = None
    mistral["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁",
                                "prepend_scheme": "first", "split": False}
    mistral["decoder"] = {"type": "Metaspace", "replacement": "▁",
                          "prepend_scheme": "first", "split": False}
    write_json(mistral, "spm_metaspace")
    return vocab


def gguf_files(spm_vocab):
    import gguf

    def bytelevel(name, pre):
        j = json.load(open(os.path.join(OUT, name, "tokenizer.json"), encoding="utf-8"))
        vocab = dict(j["model"]["vocab"])
        for a in j["added_tokens"]:
            vocab[a["content"]] = a["id"]
        tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        assert all(vocab[t] == i for i, t in enumerate(tokens))
        types = []
        added = {a["content"]: a for a in j["added_tokens"]}
        for t in tokens:
            a = added.get(t)
            types.append(1 if a is None else (3 if a["special"] else 4))
        merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
        w = gguf.GGUFWriter(os.path.join(OUT, name + ".gguf"), "llama")
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        if name == "llama3":
            w.add_bos_token_id(vocab["<|begin_of_text|>"])
            w.add_eos_token_id(vocab["<|eot_id|>"])
            w.add_add_bos_token(True)
        else:
            w.add_bos_token_id(vocab["<|endoftext|>"])
            w.add_eos_token_id(vocab["<|im_end|>"])
            w.add_add_bos_token(False)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        print("wrote", name + ".gguf")

    bytelevel("llama3", "llama-bpe")
    bytelevel("qwen2", "qwen2")

    # SentencePiece ("llama") vocabulary: scores decrease with id, as in SentencePiece BPE.
    tokens = [t for t, _ in sorted(spm_vocab.items(), key=lambda kv: kv[1])]
    scores = [0.0 if i < 259 else -float(i - 259) for i in range(len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)
    w = gguf.GGUFWriter(os.path.join(OUT, "spm.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote spm.gguf")

    # What HF makes of that vocabulary: merges derived from the scores (every split of a
    # piece into two pieces; by the piece's score, then the halves' scores, descending).
    score = {t: s for t, s in zip(tokens, scores)}
    merges = []
    for t, ty in zip(tokens, types):
        if ty != 1:
            continue
        local = [(t[:k], t[k:], score[t]) for k in range(1, len(t))
                 if t[:k] in score and t[k:] in score and types[spm_vocab[t[:k]]] == 1
                 and types[spm_vocab[t[k:]]] == 1]
        local.sort(key=lambda x: (score[x[0]], score[x[1]]), reverse=True)
        merges.extend(local)
    merges.sort(key=lambda x: x[2], reverse=True)
    j = json.load(open(os.path.join(OUT, "spm", "tokenizer.json"), encoding="utf-8"))
    j["model"]["merges"] = [[a, b] for a, b, _ in merges]
    write_json(j, "spm_gguf")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    smollm2()
    llama3()
    qwen2()
    v = spm()
    gguf_files(v)
