#!/usr/bin/env python3
"""make_mlx_models.py - MLX affine-quantized tiny models and mlx-lm goldens.

Needs tests/data/tiny/<name>/ from make_tiny_models.py. For name in
llama_gqa_tied, qwen2, qwen3 it runs mlx_lm.convert (quantize=True) on the
f32 HF model and writes tests/data/tiny/<name>_mlx_<variant>/:

  q4g64   bits 4, group 64,  dtype bfloat16  (what most mlx-community repos are)
  q8g32   bits 8, group 32,  dtype float16
  q4g128  bits 4, group 128, dtype float32
  mixed   bits 4, group 64,  dtype bfloat16, with a quant_predicate:
          every mlp.down_proj at 8 bits / group 32 (per-layer entries in
          config.json "quantization"), model.layers.1.self_attn.o_proj left
          unquantized (plain weight, no scales/biases; mlx-lm records nothing
          for it in the config: the loader sees that from the missing .scales)

"dtype" is the dtype of scales, biases, norms and any unquantized weights.

golden.json has the same layout as the HF goldens: prompts identical to the
f32 model's golden prompts, tokens = prompt + 8 greedy tokens from mlx-lm's
own generate_step (KV cache, argmax), logits from one mlx-lm forward pass over
the whole sequence on the CPU. Before running, every floating parameter is
upcast to float32 (exact), so the goldens are "the stored weights, computed in
f32" and a C engine computing in f32 can be held to a tight tolerance.

Run: ~/.cache/vllm-metal/venv-ref/bin/python scripts/oracles/make_mlx_models.py
"""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map
from mlx_lm.convert import convert
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model

mx.set_default_device(mx.cpu)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY = os.path.join(REPO, "tests", "data", "tiny")
MODELS = ["llama_gqa_tied", "qwen2", "qwen3"]
NEW_TOKENS = 8


def mixed_predicate(path, module):
    if path.endswith("mlp.down_proj"):
        return {"group_size": 32, "bits": 8}
    if path == "model.layers.1.self_attn.o_proj":
        return False
    return True


VARIANTS = [
    ("q4g64", dict(q_bits=4, q_group_size=64, dtype="bfloat16")),
    ("q8g32", dict(q_bits=8, q_group_size=32, dtype="float16")),
    ("q4g128", dict(q_bits=4, q_group_size=128, dtype="float32")),
    ("mixed", dict(q_bits=4, q_group_size=64, dtype="bfloat16",
                   quant_predicate=mixed_predicate)),
]


def write_dummy_tokenizer(d, vocab_size):
    """mlx_lm.convert insists on a tokenizer; a word-level one over <0>..<255>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({f"<{i}>": i for i in range(vocab_size)}, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<0>").save_pretrained(d)


def fmt(x):
    return float("%.7g" % x)


def upcast_f32(model):
    def up(v):
        if isinstance(v, mx.array) and v.dtype in (mx.float16, mx.bfloat16):
            return v.astype(mx.float32)
        return v
    model.update(tree_map(up, model.parameters()))
    mx.eval(model.parameters())


def greedy(model, prompt):
    out = []
    for tok, _ in generate_step(mx.array(prompt), model, max_tokens=NEW_TOKENS,
                                sampler=lambda x: mx.argmax(x, axis=-1)):
        out.append(int(tok))
    return out


def golden(d, prompts):
    model, _ = load_model(Path(d))
    upcast_f32(model)
    res = {"prompts": []}
    min_margin = float("inf")
    mismatches = 0
    for prompt in prompts:
        tokens = prompt + greedy(model, prompt)
        assert len(tokens) == len(prompt) + NEW_TOKENS
        logits = model(mx.array([tokens]))[0].astype(mx.float32)
        logits = np.array(logits)
        P = len(prompt)
        for i in range(P - 1, len(tokens) - 1):
            order = np.argsort(-logits[i], kind="stable")
            if order[0] != tokens[i + 1]:
                mismatches += 1
            min_margin = min(min_margin, float(logits[i][order[0]] - logits[i][order[1]]))
        res["prompts"].append({"tokens": tokens, "prompt_len": P,
                               "logits": [[fmt(v) for v in row] for row in logits.tolist()]})
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(res, f, separators=(",", ":"))
        f.write("\n")
    return min_margin, mismatches


def main():
    for name in MODELS:
        src_dir = os.path.join(TINY, name)
        with open(os.path.join(src_dir, "golden.json")) as f:
            prompts = [p["tokens"][:p["prompt_len"]] for p in json.load(f)["prompts"]]
        with open(os.path.join(src_dir, "config.json")) as f:
            vocab = json.load(f)["vocab_size"]
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "src")
            shutil.copytree(src_dir, src, ignore=shutil.ignore_patterns("golden.json"))
            write_dummy_tokenizer(src, vocab)
            for vname, kw in VARIANTS:
                d = os.path.join(TINY, f"{name}_mlx_{vname}")
                if os.path.isdir(d):
                    shutil.rmtree(d)
                convert(src, d, quantize=True, **kw)
                # keep only what a model dir needs: weights + config (no dummy tokenizer, card)
                for fn in os.listdir(d):
                    if not (fn.endswith(".safetensors") or fn in ("config.json",
                                                                   "model.safetensors.index.json")):
                        os.remove(os.path.join(d, fn))
                margin, mism = golden(d, prompts)
                with open(os.path.join(d, "config.json")) as f:
                    q = json.load(f)["quantization"]
                w = mx.load(os.path.join(d, "model.safetensors"))
                quantized = sorted(k[:-len(".scales")] for k in w if k.endswith(".scales"))
                plain = sorted(k for k in w if k.endswith(".weight")
                               and k[:-len(".weight")] not in quantized and w[k].ndim == 2)
                print(f"{name}_mlx_{vname}: quantization={json.dumps(q)}")
                print(f"   quantized: {len(quantized)} incl. embed={'model.embed_tokens' in quantized}"
                      f" lm_head={'lm_head' in quantized}; 2-D unquantized: {plain}")
                print(f"   min greedy margin {margin:.4g}, cache-vs-full argmax mismatches {mism}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
