#!/usr/bin/env python3
"""make_mlx_model.py - the default GGUF model as an MLX 4-bit checkpoint, for the
mlx-lm vs vllm-metal rows of `make bench`.

  GGUF (Q4_1/Q8_0) --gguf.quants.dequantize--> HF Llama f32 safetensors + config.json
                   --mlx_lm.convert -q (4-bit, group 64)--> MLX affine 4-bit

Both land in the cache, never in the repo:
  ~/.cache/vllm-metal/SmolLM2-135M-Instruct-f32/      (HF, f32, from the GGUF)
  ~/.cache/vllm-metal/SmolLM2-135M-Instruct-mlx-4bit/ (mlx_lm.convert output)
Prints the MLX directory. Idempotent: skips whatever exists.

llama.cpp's converter permutes the rows of Q and K for its RoPE layout; this
undoes it so the checkpoint is the plain HF (rotate-half) form mlx-lm expects.
The tokenizer is the one transformers builds from the same GGUF, committed in
tests/data/smollm2/tokenizer/.

Run with the bench venv: ~/.cache/vllm-metal/venv-bench/bin/python bench/make_mlx_model.py
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CACHE = os.environ.get("VLLM_METAL_CACHE", os.path.expanduser("~/.cache/vllm-metal"))
TOKENIZER_DIR = os.path.join(ROOT, "tests", "data", "smollm2", "tokenizer")


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


def unpermute(w, n_head):
    # inverse of llama.cpp convert_hf_to_gguf.py permute():
    #   w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols)
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_to_hf(gguf_path, out_dir):
    import gguf
    from safetensors.numpy import save_file

    r = gguf.GGUFReader(gguf_path)
    arch = field(r, "general.architecture")
    if arch != "llama":
        sys.exit(f"make_mlx_model: only llama GGUFs are handled (got {arch})")
    n_head = int(field(r, "llama.attention.head_count"))
    n_kv = int(field(r, "llama.attention.head_count_kv"))
    hidden = int(field(r, "llama.embedding_length"))
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(field(r, "llama.feed_forward_length")),
        "num_hidden_layers": int(field(r, "llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": hidden // n_head,
        "rms_norm_eps": float(field(r, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(field(r, "llama.rope.freq_base")),
        "max_position_embeddings": int(field(r, "llama.context_length")),
        "vocab_size": int(field(r, "llama.vocab_size")),
        "bos_token_id": int(field(r, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field(r, "tokenizer.ggml.eos_token_id")),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    names = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    }
    tensors = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        # numpy shape is the GGUF shape reversed = HF [out, in]
        w = w.reshape([int(x) for x in reversed(t.shape)]) if w.ndim != len(t.shape) else w
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        elif parts[0] == "blk" and parts[2] in names:
            name = f"model.layers.{parts[1]}.{names[parts[2]]}.{parts[3]}"
            if parts[2] == "attn_q":
                w = unpermute(w, n_head)
            elif parts[2] == "attn_k":
                w = unpermute(w, n_kv)
        else:
            sys.exit(f"make_mlx_model: unexpected tensor {t.name}")
        tensors[name] = np.ascontiguousarray(w)
    cfg["tie_word_embeddings"] = "lm_head.weight" not in tensors
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for fn in os.listdir(TOKENIZER_DIR):
        shutil.copy(os.path.join(TOKENIZER_DIR, fn), out_dir)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.join(CACHE, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--hf-dir", default=os.path.join(CACHE, "SmolLM2-135M-Instruct-f32"))
    ap.add_argument("--mlx-dir", default=os.path.join(CACHE, "SmolLM2-135M-Instruct-mlx-4bit"))
    a = ap.parse_args()
    if not os.path.exists(os.path.join(a.hf_dir, "model.safetensors")):
        print(f"make_mlx_model: dequantizing {a.gguf} -> {a.hf_dir}", file=sys.stderr)
        tmp = a.hf_dir + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        gguf_to_hf(a.gguf, tmp)
        os.replace(tmp, a.hf_dir)
    if not os.path.exists(os.path.join(a.mlx_dir, "config.json")):
        print(f"make_mlx_model: mlx_lm.convert -q (4-bit, group 64) -> {a.mlx_dir}", file=sys.stderr)
        import mlx.core as mx
        mx.set_default_device(mx.cpu)
        from mlx_lm import convert
        tmp = a.mlx_dir + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        convert(a.hf_dir, mlx_path=tmp, quantize=True, q_bits=4, q_group_size=64)
        os.replace(tmp, a.mlx_dir)
    print(a.mlx_dir)


if __name__ == "__main__":
    main()
