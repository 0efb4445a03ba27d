#!/usr/bin/env python3
"""gpu_transformers_peer.py - the transformers peer on the GPU machine.

  gpu_transformers_peer.py OUT_DIR [--batches 1,32] [--input-len 128] [--output-len 128] [--no-save]

Builds a random model with Qwen2.5-1.5B's shapes (hidden 1536, intermediate
8960, 28 layers, 12 heads, 2 KV heads, vocab 151936, tied embeddings) from a
fixed seed in bf16 on cuda, saves it with save_pretrained to OUT_DIR (what
vllm-metal then loads), and times transformers' generate (greedy, KV cache,
exactly output-len new tokens) at each batch size: random prompts of
input-len tokens, one warm-up run, then one timed run. Prints one JSON line
per batch: {"peer":"transformers","batch":B,"output_tok_s":...,"decode_ms_per_step":...}.
"""
import argparse
import json
import os
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def build(out_dir, save, shape):
    if shape == "smollm2":   # SmolLM2-135M's shapes (Llama), for the small-model rows
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                          max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5, bos_token_id=1,
                          eos_token_id=2, torch_dtype="bfloat16")
        torch.manual_seed(1234)
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        model.eval()
        if save:
            os.makedirs(out_dir, exist_ok=True)
            model.save_pretrained(out_dir, safe_serialization=True)
        return model
    cfg = Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                      num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
                      rope_theta=1000000.0, rms_norm_eps=1e-6, torch_dtype="bfloat16", bos_token_id=151643,
                      eos_token_id=151643, hidden_act="silu", use_sliding_window=False)
    torch.manual_seed(1234)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.eval()
    if save:
        os.makedirs(out_dir, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
    return model


def time_generate(model, batch, in_len, out_len):
    g = torch.Generator(device="cpu").manual_seed(batch)
    ids = torch.randint(1, model.config.vocab_size - 1, (batch, in_len), generator=g).cuda()
    mask = torch.ones_like(ids)
    kw = dict(attention_mask=mask, do_sample=False, min_new_tokens=out_len, max_new_tokens=out_len,
              pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        model.generate(ids, **dict(kw, min_new_tokens=8, max_new_tokens=8))   # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids[:, :in_len], **dict(kw, min_new_tokens=1, max_new_tokens=1))   # prefill alone
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        out = model.generate(ids, **kw)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
    n_new = (out.shape[1] - in_len) * batch
    total = t2 - t1
    prefill = t1 - t0
    return {"peer": "transformers", "batch": batch, "input_len": in_len, "output_len": out_len,
            "output_tok_s": round(n_new / total, 2), "elapsed_s": round(total, 3),
            "decode_ms_per_step": round((total - prefill) * 1e3 / max(1, out_len - 1), 3),
            "torch": torch.__version__, "device": torch.cuda.get_device_name(0)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--shape", default="qwen2.5-1.5b", choices=["qwen2.5-1.5b", "smollm2"])
    a = ap.parse_args()
    t = time.perf_counter()
    model = build(a.out_dir, not a.no_save, a.shape)
    print(json.dumps({"built_s": round(time.perf_counter() - t, 1), "out_dir": a.out_dir}), flush=True)
    if a.no_time:
        return
    for b in [int(x) for x in a.batches.split(",") if x]:
        print(json.dumps(time_generate(model, b, a.input_len, a.output_len)), flush=True)


if __name__ == "__main__":
    main()
