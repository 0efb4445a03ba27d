#!/usr/bin/env python3
"""make_tiny_vlm.py - tiny random-weight Qwen2-VL / Qwen2.5-VL models and goldens.

Run with the reference venv plus torchvision and Pillow (the HF Qwen2-VL image
processor in transformers 5 is the torchvision backend by default; Pillow
loads the test images as the processor's users do).  torchvision is installed
beside the venv without touching torch:

    ~/.cache/vllm-metal/venv-ref/bin/pip install --target /tmp/tvpkgs --no-deps \
        torchvision==0.29.2 pillow==13.0.0
    PYTHONPATH=/tmp/tvpkgs ~/.cache/vllm-metal/venv-ref/bin/python scripts/oracles/make_tiny_vlm.py

Writes tests/data/tiny_vlm/:
  images/*.png|jpg          test images (generated here, deterministic)
  preprocess.json           per case: image, min/max_pixels, resized h/w, grid_thw,
                            files <case>.u8 (resized RGB, HWC uint8) and <case>.f32
                            (pixel_values, [n_patches, 1176] little-endian f32)
  qwen2_vl/, qwen2_5_vl/    config.json, model.safetensors (F32, transformers 5
                            names: model.visual.*, model.language_model.*, lm_head),
                            golden.json (+ feat_*.f32 vision features)
"""
import json
import math
import os
import sys

import numpy as np
import torch
from PIL import Image

from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                          Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration)
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "data", "tiny_vlm")

VOCAB = 256
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = 250, 251, 252, 253
BOS, EOS = 1, 2
MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 8   # small so goldens stay small


def make_images():
    d = os.path.join(OUT, "images")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(1234)

    def pattern(h, w, c=3):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        base = np.stack([128 + 100 * np.sin(x / 5.0 + k) * np.cos(y / 7.0 - k) for k in range(c)], -1)
        base += rng.normal(0, 25, size=base.shape)
        base[(x.astype(int) // 9 + y.astype(int) // 9) % 2 == 0] += 40   # hard edges
        return np.clip(np.round(base), 0, 255).astype(np.uint8)

    imgs = {}
    Image.fromarray(pattern(60, 90)).save(os.path.join(d, "rgb_60x90.png")); imgs["rgb_60x90"] = "rgb_60x90.png"
    Image.fromarray(pattern(37, 120)).save(os.path.join(d, "wide_37x120.jpg"), quality=90)
    imgs["wide_37x120"] = "wide_37x120.jpg"
    Image.fromarray(pattern(150, 41)).save(os.path.join(d, "tall_150x41.png")); imgs["tall_150x41"] = "tall_150x41.png"
    Image.fromarray(pattern(200, 170)).save(os.path.join(d, "big_200x170.jpg"), quality=85)
    imgs["big_200x170"] = "big_200x170.jpg"
    Image.fromarray(pattern(30, 25)).save(os.path.join(d, "small_30x25.png")); imgs["small_30x25"] = "small_30x25.png"
    Image.fromarray(pattern(56, 84)[..., 0], mode="L").save(os.path.join(d, "gray_56x84.png"))
    imgs["gray_56x84"] = "gray_56x84.png"
    rgba = np.concatenate([pattern(45, 70), rng.integers(0, 256, (45, 70, 1), dtype=np.uint8)], -1)
    Image.fromarray(rgba, mode="RGBA").save(os.path.join(d, "rgba_45x70.png")); imgs["rgba_45x70"] = "rgba_45x70.png"
    return imgs


def processor(max_pixels=MAX_PIXELS):
    return Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=max_pixels)


def write_f32(path, arr):
    np.ascontiguousarray(arr, dtype="<f4").tofile(path)


def preprocess_goldens(imgs):
    cases = []
    # (case name, image, max_pixels)
    plan = [(k, k, MAX_PIXELS) for k in imgs] + [("big_200x170_max20k", "big_200x170", 28 * 28 * 26)]
    for name, key, maxp in plan:
        im = Image.open(os.path.join(OUT, "images", imgs[key]))
        proc = processor(maxp)
        out = proc(images=[im], return_tensors="pt")
        pv = out["pixel_values"].numpy()
        thw = out["image_grid_thw"][0].tolist()
        # the resized uint8 image, as the processor's resize makes it
        from transformers.image_transforms import convert_to_rgb   # white-composites transparency
        t = torch.from_numpy(convert_to_rgb(im, return_numpy=True)).permute(2, 0, 1).contiguous()
        from transformers.image_utils import SizeDict
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
        h, w = smart_resize(t.shape[1], t.shape[2], 28, MIN_PIXELS, maxp)
        r = proc.resize(t[None], SizeDict(shortest_edge=MIN_PIXELS, longest_edge=maxp), resample=proc.resample, factor=28)[0]
        assert tuple(r.shape[1:]) == (h, w) and r.dtype == torch.uint8
        assert thw == [1, h // 14, w // 14]
        r.permute(1, 2, 0).contiguous().numpy().tofile(os.path.join(OUT, f"{name}.u8"))
        write_f32(os.path.join(OUT, f"{name}.f32"), pv)
        cases.append({"name": name, "image": "images/" + imgs[key], "min_pixels": MIN_PIXELS, "max_pixels": maxp,
                      "orig_hw": [im.height, im.width], "resized_hw": [h, w], "grid_thw": thw,
                      "n_patches": pv.shape[0], "patch_dim": pv.shape[1]})
        print(f"preprocess {name}: {im.size} mode {im.mode} -> {w}x{h}, grid {thw}")
    meta = {"image_mean": list(processor().image_mean), "image_std": list(processor().image_std),
            "resample": "bicubic (torchvision, antialias, uint8 native CPU path)", "cases": cases}
    with open(os.path.join(OUT, "preprocess.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return {c["name"]: c for c in cases}


def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name or "ln_q" in name:
                if name.endswith("bias"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
                else:
                    p.copy_(1 + torch.randn(p.shape, generator=g) * 0.2)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "patch_embed" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.03)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)


TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            rms_norm_eps=1e-6, bos_token_id=BOS, eos_token_id=EOS,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
IDS = dict(image_token_id=IMAGE_PAD, video_token_id=VIDEO_PAD, vision_start_token_id=VISION_START,
           vision_end_token_id=VISION_END, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0)


def build(kind):
    if kind == "qwen2_vl":
        vis = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=4, num_heads=2, in_channels=3,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu")
        cfg = Qwen2VLConfig(text_config=dict(TEXT), vision_config=vis, tie_word_embeddings=True, **IDS)
        model = Qwen2VLForConditionalGeneration(cfg)
    else:
        vis = dict(depth=3, hidden_size=32, intermediate_size=80, num_heads=2, in_channels=3, out_hidden_size=64,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                   fullatt_block_indexes=[1], hidden_act="silu", tokens_per_second=2)
        cfg = Qwen2_5_VLConfig(text_config=dict(TEXT), vision_config=vis, tie_word_embeddings=False, **IDS)
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    model = model.float().eval()
    init_weights(model, 7 if kind == "qwen2_vl" else 8)
    return model


def prompt_tokens(rng, grids):
    """<text> (vision_start image_pad*n vision_end <text>)* for each grid."""
    toks = [BOS] + list(rng.integers(3, 240, 4))
    for g in grids:
        n = g[0] * g[1] * g[2] // 4
        toks += [VISION_START] + [IMAGE_PAD] * n + [VISION_END] + list(rng.integers(3, 240, 3))
    return [int(t) for t in toks]


def model_goldens(kind, cases):
    d = os.path.join(OUT, kind)
    os.makedirs(d, exist_ok=True)
    model = build(kind)
    model.save_pretrained(d, safe_serialization=True)
    rng = np.random.default_rng(99)
    prompts = []
    for images in (["rgb_60x90"], ["wide_37x120", "tall_150x41"], ["big_200x170_max20k"]):
        pims = [Image.open(os.path.join(OUT, cases[c]["image"])) for c in images]
        proc = processor(cases[images[0]]["max_pixels"])
        pp = proc(images=pims, return_tensors="pt")
        pv, thw = pp["pixel_values"], pp["image_grid_thw"]
        toks = prompt_tokens(rng, thw.tolist())
        ids = torch.tensor([toks])
        mm = (ids == IMAGE_PAD).int()
        with torch.no_grad():
            feats = model.model.get_image_features(pv, thw, return_dict=True).pooler_output
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv,
                                 image_grid_thw=thw, mm_token_type_ids=mm, max_new_tokens=6, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
            full = gen[0].tolist()
            fids = torch.tensor([full])
            fmm = (fids == IMAGE_PAD).int()
            pos, delta = model.model.get_rope_index(fids, fmm, image_grid_thw=thw)
            out = model(input_ids=fids, attention_mask=torch.ones_like(fids), pixel_values=pv, image_grid_thw=thw,
                        mm_token_type_ids=fmm)
            logits = out.logits[0].numpy()
        P = len(toks)
        am = logits.argmax(-1)
        assert all(am[i] == full[i + 1] for i in range(P - 1, len(full) - 1)), "generate vs forward disagree"
        srt = np.sort(logits[P - 1:], -1)
        margin = float((srt[:, -1] - srt[:, -2]).min())
        feat_files = []
        for i, f in enumerate(feats):
            fn = f"feat_{len(prompts)}_{i}.f32"
            write_f32(os.path.join(d, fn), f.numpy())
            feat_files.append(fn)
        prompts.append({"images": images, "grid_thw": thw.tolist(), "tokens": full, "prompt_len": P,
                        "positions": pos[:, 0].tolist(), "rope_delta": int(delta[0, 0]),
                        "features": feat_files, "feature_dim": int(feats[0].shape[1]),
                        "logits": [[float(f"{v:.7g}") for v in row] for row in logits]})
        print(f"{kind}: images {images} grid {thw.tolist()} prompt {P} tokens, delta {int(delta[0,0])}, "
              f"min greedy margin {margin:.3g}")
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump({"prompts": prompts}, f)


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    imgs = make_images()
    cases = preprocess_goldens(imgs)
    for kind in ("qwen2_vl", "qwen2_5_vl"):
        model_goldens(kind, cases)


if __name__ == "__main__":
    sys.exit(main())
