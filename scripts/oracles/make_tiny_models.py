#!/usr/bin/env python3
"""make_tiny_models.py - tiny random-weight HF models and their transformers goldens.

Writes into tests/data/tiny/ (relative to the repo root):

  <name>/            f32 safetensors + config.json + golden.json
  <name>_f16/        the same weights rounded to float16
  <name>_bf16/       the same weights rounded to bfloat16
  llama_gqa_tied_sharded/   f32 llama_gqa_tied split into >= 2 shards + index

for name in llama_gqa_tied, llama3_untied, qwen2, qwen3, mistral.

golden.json = {"prompts": [{"tokens": [...], "prompt_len": P,
                            "logits": [[vocab floats] per position]}, ...]}
tokens = prompt + 8 greedy tokens from transformers' generate(); logits are
computed by transformers in float32 (f16/bf16 dirs are loaded with
dtype=float32, so the rounded weights are upcast) over the whole sequence in
one forward pass; floats rounded to 7 significant digits.

config.json style: transformers 5 writes "rope_parameters" and "dtype". Most
configs in the wild still carry the older "rope_theta" / "rope_scaling" /
"torch_dtype" keys, so the f32, f16 and sharded dirs are rewritten to the
legacy keys only, while the bf16 dirs keep transformers 5's own style. Both
parse to the same model (checked: reloaded logits match the in-memory model).

Deterministic: fixed seeds, CPU, one thread.  Run with the reference venv:
  ~/.cache/vllm-metal/venv-ref/bin/python scripts/oracles/make_tiny_models.py
"""
import copy
import json
import os
import shutil
import sys

import numpy as np
import torch
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(REPO, "tests", "data", "tiny")
PROMPT_LENS = [1, 5, 17, 40]
NEW_TOKENS = 8
VOCAB = 256
WEIGHT_STD = 0.08

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

COMMON = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
              vocab_size=VOCAB, rms_norm_eps=1e-5, max_position_embeddings=256,
              bos_token_id=1, eos_token_id=2)


def model_specs():
    """name -> (model class, config). Order fixes the per-model seeds."""
    return [
        ("llama_gqa_tied", LlamaForCausalLM, LlamaConfig(
            **COMMON, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=True, rope_theta=10000.0)),
        ("llama3_untied", LlamaForCausalLM, LlamaConfig(
            **COMMON, num_attention_heads=4, num_key_value_heads=1,
            tie_word_embeddings=False, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0,
                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64})),
        ("qwen2", Qwen2ForCausalLM, Qwen2Config(
            **COMMON, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=True, rope_theta=1000000.0,
            use_sliding_window=False)),
        ("qwen3", Qwen3ForCausalLM, Qwen3Config(
            **COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
            tie_word_embeddings=False, rope_theta=1000000.0,
            attention_bias=False, use_sliding_window=False)),
        ("mistral", MistralForCausalLM, MistralConfig(
            **COMMON, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=False, rope_theta=10000.0, sliding_window=None)),
    ]


def init_weights(model, seed):
    """Overwrite every parameter from a seeded generator (order = named_parameters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):       # all RMSNorms incl. q_norm/k_norm
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith(".bias"):           # qwen2 q/k/v biases
                v = 0.1 * torch.randn(p.shape, generator=g)
            else:
                v = WEIGHT_STD * torch.randn(p.shape, generator=g)
            p.copy_(v.to(p.dtype))
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def make_prompts():
    rng = np.random.default_rng(1234)
    # ids 3..255: keep clear of the bos/eos ids (1, 2) and 0.
    return [rng.integers(3, VOCAB, size=n).tolist() for n in PROMPT_LENS]


def fmt(x):
    return float("%.7g" % x)


def rewrite_config(path, legacy, dtype_name):
    """Legacy: rope_theta/rope_scaling/torch_dtype instead of rope_parameters/dtype."""
    with open(path) as f:
        cfg = json.load(f)
    if legacy:
        rp = cfg.pop("rope_parameters")
        cfg.pop("dtype", None)
        cfg["rope_theta"] = rp["rope_theta"]
        scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
        cfg["rope_scaling"] = None if scaling.get("rope_type") == "default" else scaling
        cfg["torch_dtype"] = dtype_name
    else:
        cfg["dtype"] = dtype_name
    cfg = dict(sorted(cfg.items()))
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def save(model, d, dtype, dtype_name, legacy, max_shard_size=None):
    if os.path.isdir(d):
        shutil.rmtree(d)
    m = copy.deepcopy(model).to(dtype)   # .to() is in place: keep the f32 master intact
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    m.save_pretrained(d, **kw)
    os.remove(os.path.join(d, "generation_config.json"))
    rewrite_config(os.path.join(d, "config.json"), legacy, dtype_name)


@torch.no_grad()
def golden(d, prompts, reference=None):
    """Load d in float32, greedy-generate 8 tokens per prompt, logits over all positions."""
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    model.eval()
    out = {"prompts": []}
    min_margin = float("inf")
    for prompt in prompts:
        ids = torch.tensor([prompt])
        gen = model.generate(ids, attention_mask=torch.ones_like(ids),
                             do_sample=False, max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, eos_token_id=None,
                             pad_token_id=0, num_beams=1,
                             temperature=None, top_p=None, top_k=None)
        tokens = gen[0].tolist()
        assert len(tokens) == len(prompt) + NEW_TOKENS
        logits = model(torch.tensor([tokens])).logits[0].float()
        if reference is not None:   # the in-memory model: config round trip check
            ref = reference(torch.tensor([tokens])).logits[0].float()
            assert torch.allclose(logits, ref, atol=1e-5, rtol=0), (d, (logits - ref).abs().max())
        # generate's tokens must be the argmax of the full-sequence logits
        P = len(prompt)
        for i in range(P - 1, len(tokens) - 1):
            top2 = torch.topk(logits[i], 2)
            assert top2.indices[0].item() == tokens[i + 1], (d, i)
            min_margin = min(min_margin, (top2.values[0] - top2.values[1]).item())
        out["prompts"].append({
            "tokens": tokens, "prompt_len": P,
            "logits": [[fmt(v) for v in row] for row in logits.tolist()]})
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    return min_margin


def main():
    os.makedirs(OUT, exist_ok=True)
    prompts = make_prompts()
    for seed, (name, cls, cfg) in enumerate(model_specs(), start=100):
        torch.manual_seed(seed)
        model = cls(cfg).eval()
        init_weights(model, seed)
        variants = [(name, torch.float32, "float32", True, None),
                    (name + "_f16", torch.float16, "float16", True, None),
                    (name + "_bf16", torch.bfloat16, "bfloat16", False, None)]
        if name == "llama_gqa_tied":
            variants.append((name + "_sharded", torch.float32, "float32", True, "400KB"))
        for vname, dtype, dtype_name, legacy, shard in variants:
            d = os.path.join(OUT, vname)
            save(model, d, dtype, dtype_name, legacy, shard)
            ref = model if dtype == torch.float32 else None
            margin = golden(d, prompts, ref)
            files = sorted(os.listdir(d))
            print(f"{vname:28s} min greedy top1-top2 margin {margin:.4g}  files {files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
