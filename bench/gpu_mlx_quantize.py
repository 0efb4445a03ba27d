#!/usr/bin/env python3
"""gpu_mlx_quantize.py - an HF safetensors model as an MLX affine 4-bit checkpoint.

  gpu_mlx_quantize.py SRC_DIR DST_DIR [--bits 4] [--group 64]

For the GPU table's MLX 4-bit rows on the GPU machine, where mlx is not
installed: every 2-D weight of a linear layer or the embedding (the tied
lm_head comes with it) is quantized the way MLX's affine mode stores it:
per group of `group` columns, scale = (max - min) / (2^bits - 1), bias = min,
q = round((w - bias) / scale) in [0, 2^bits - 1], 32 / bits values packed
per uint32 (value i of a word at bits [i*bits, (i+1)*bits)), scales and biases
in the model's dtype. Norms and biases are copied as they are, and config.json
gets "quantization": {"group_size", "bits", "mode": "affine"}. Uses torch (on
the GPU when there is one) and safetensors.
"""
import argparse
import glob
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

QUANTIZED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head")


def quantize(w, bits, group):
    rows, cols = w.shape
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = w.to(dev, torch.float32).reshape(rows, cols // group, group)
    lo, hi = g.amin(dim=2, keepdim=True), g.amax(dim=2, keepdim=True)
    levels = (1 << bits) - 1
    scale = (hi - lo) / levels
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round((g - lo) / scale), 0, levels).to(torch.int64).reshape(rows, cols)
    per = 32 // bits
    q = q.reshape(rows, cols // per, per)
    shifts = (torch.arange(per, device=q.device, dtype=torch.int64) * bits)
    words = (q << shifts).sum(dim=2)                        # < 2^32
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)   # same bits as uint32
    dt = w.dtype
    return (words.cpu(), scale.reshape(rows, cols // group).to(dt).cpu(), lo.reshape(rows, cols // group).to(dt).cpu())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=64)
    a = ap.parse_args()
    os.makedirs(a.dst, exist_ok=True)
    out = {}
    for f in sorted(glob.glob(os.path.join(a.src, "*.safetensors"))):
        for k, t in load_file(f).items():
            if t.ndim == 2 and k.endswith(".weight") and any(n in k for n in QUANTIZED):
                w, s, b = quantize(t, a.bits, a.group)
                base = k[: -len(".weight")]
                out[k], out[base + ".scales"], out[base + ".biases"] = w, s, b
            else:
                out[k] = t.contiguous()
    # safetensors has no uint32 in torch: store int32 and relabel the header
    path = os.path.join(a.dst, "model.safetensors")
    save_file(out, path, metadata={"format": "mlx"})
    with open(path, "r+b") as fh:
        n = int.from_bytes(fh.read(8), "little")
        hdr = fh.read(n).decode()
        new = hdr.replace('"dtype":"I32"', '"dtype":"U32"')
        assert len(new) == len(hdr)
        fh.seek(8)
        fh.write(new.encode())
    cfg = json.load(open(os.path.join(a.src, "config.json")))
    cfg["quantization"] = cfg["quantization_config"] = {"group_size": a.group, "bits": a.bits, "mode": "affine"}
    json.dump(cfg, open(os.path.join(a.dst, "config.json"), "w"), indent=2)
    for extra in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(a.src, extra)):
            shutil.copy(os.path.join(a.src, extra), a.dst)
    print(a.dst)


if __name__ == "__main__":
    main()
