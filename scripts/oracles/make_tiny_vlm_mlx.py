#!/usr/bin/env python3
"""make_tiny_vlm_mlx.py - the tiny Qwen2-VL as an mlx-community checkpoint, made by mlx-vlm.

Needs the reference venv plus mlx-vlm (installed without its heavy optional
deps: the converter and the qwen2_vl model only import mlx, transformers,
PIL, requests, huggingface_hub) and torchvision/Pillow beside the venv for
the HF processor the converter loads:

    ~/.cache/vllm-metal/venv-ref/bin/pip install --no-deps mlx-vlm==0.7.10
    ~/.cache/vllm-metal/venv-ref/bin/pip install --target /tmp/tvpkgs --no-deps \
        torchvision==0.29.2 pillow==13.0.0
    PYTHONPATH=/tmp/tvpkgs ~/.cache/vllm-metal/venv-ref/bin/python scripts/oracles/make_tiny_vlm_mlx.py

Input: tests/data/tiny_vlm/qwen2_vl (make_tiny_vlm.py; F32, transformers-5
config layout; transformers 5's save_pretrained already writes the legacy
tensor names model.layers.* / visual.*).  mlx-vlm 0.7.10's qwen2_vl loader only reads the
layout the published Qwen/Qwen2-VL-*-Instruct checkpoints have
(transformers 4: text fields at the top level of config.json, rope_theta and
rope_scaling {"type": "mrope", "mrope_section"} at the top level, tensors
named model.layers.* / model.embed_tokens / model.norm / visual.* / lm_head),
so the script first stages that layout in a temp dir (same tensors, renamed;
same numbers), then runs mlx_vlm.convert.convert(quantize=True, q_bits=4,
q_group_size=64) on it, exactly as `python -m mlx_vlm.convert -q` does.

What mlx-vlm writes (and the C loader has to read):
  * tensor names language_model.model.*, language_model.lm_head (absent here:
    tied), vision_tower.* (the HF visual.* names below the prefix);
  * vision_tower.patch_embed.proj.weight channels-last [out, t, h, w, in]
    (Qwen2VL VisionModel.sanitize transposes the torch [out, in, t, h, w]);
  * language-model Linear/Embedding layers MLX-affine quantized (weight U32,
    scales, biases); the vision tower is left unquantized
    (skip_multimodal_module);
  * config.json: the staged config plus "quantization" and
    "quantization_config" {"group_size": 64, "bits": 4, "mode": "affine"}.

Writes tests/data/tiny_vlm/qwen2_vl_mlx_q4/: the converted checkpoint, and
golden.json + feat_*.f32 computed by mlx-vlm's own Qwen2-VL model on the MLX
CPU device, for the same images and prompts as qwen2_vl/golden.json:
  prompts[i].tokens  = the prompt + 6 greedy tokens (argmax of mlx-vlm's
                       logits, full recompute each step, no KV cache)
  prompts[i].logits  = one forward over all tokens, every position, 7 sig. digits
  prompts[i].features = vision_tower(pixel_values, grid_thw) per image
pixel_values come from the committed tests/data/tiny_vlm/<case>.f32 (the HF
processor's output, the same the HF goldens used).
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np

import mlx.core as mx
from safetensors.numpy import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TV = os.path.join(ROOT, "tests", "data", "tiny_vlm")
SRC = os.path.join(TV, "qwen2_vl")
OUT = os.path.join(TV, "qwen2_vl_mlx_q4")
Q_BITS, Q_GROUP = 4, 64
N_GEN = 6


def stage_hf_v4(dst):
    """The tiny HF model in the transformers-4 layout mlx-vlm's qwen2_vl reads."""
    with open(os.path.join(SRC, "config.json")) as f:
        c5 = json.load(f)
    t, v = c5["text_config"], c5["vision_config"]
    rp = t["rope_parameters"]
    cfg = {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "attention_dropout": 0.0,
        "bos_token_id": c5["bos_token_id"], "eos_token_id": c5["eos_token_id"],
        "vision_start_token_id": c5["vision_start_token_id"], "vision_end_token_id": c5["vision_end_token_id"],
        "image_token_id": c5["image_token_id"], "video_token_id": c5["video_token_id"],
        "hidden_act": t["hidden_act"], "hidden_size": t["hidden_size"],
        "initializer_range": 0.02, "intermediate_size": t["intermediate_size"],
        "max_position_embeddings": t["max_position_embeddings"], "max_window_layers": t["max_window_layers"],
        "num_attention_heads": t["num_attention_heads"], "num_hidden_layers": t["num_hidden_layers"],
        "num_key_value_heads": t["num_key_value_heads"], "rms_norm_eps": t["rms_norm_eps"],
        "rope_theta": rp["rope_theta"],
        "rope_scaling": {"type": "mrope", "mrope_section": rp["mrope_section"]},
        "sliding_window": 32768, "use_sliding_window": False,
        "tie_word_embeddings": c5["tie_word_embeddings"], "torch_dtype": "float32",
        "transformers_version": "4.41.2", "use_cache": True, "vocab_size": t["vocab_size"],
        "vision_config": {
            "depth": v["depth"], "embed_dim": v["embed_dim"], "mlp_ratio": v["mlp_ratio"],
            "num_heads": v["num_heads"], "in_chans": v["in_channels"], "hidden_size": v["hidden_size"],
            "patch_size": v["patch_size"], "spatial_merge_size": v["spatial_merge_size"],
            "spatial_patch_size": v["patch_size"], "temporal_patch_size": v["temporal_patch_size"],
        },
    }
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    w = load_file(os.path.join(SRC, "model.safetensors"))
    out = {}
    for k, a in w.items():
        if k.startswith("model.language_model."):
            k = "model." + k[len("model.language_model."):]
        elif k.startswith("model.visual."):
            k = "visual." + k[len("model.visual."):]
        elif not k.startswith(("lm_head.", "model.", "visual.")):
            raise SystemExit(f"unexpected tensor {k}")
        out[k] = a
    save_file(out, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    for fn in ("generation_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(SRC, fn), os.path.join(dst, fn))


def write_f32(path, arr):
    np.ascontiguousarray(arr, dtype="<f4").tofile(path)


def main():
    mx.set_default_device(mx.cpu)
    from mlx_vlm.convert import convert
    from mlx_vlm.utils import load_model

    with tempfile.TemporaryDirectory() as tmp:
        stage = os.path.join(tmp, "hf")
        stage_hf_v4(stage)
        if os.path.exists(OUT):
            shutil.rmtree(OUT)
        convert(hf_path=stage, mlx_path=OUT, quantize=True, q_bits=Q_BITS, q_group_size=Q_GROUP)
    if os.path.exists(os.path.join(OUT, "README.md")):   # the model card: not needed here
        os.remove(os.path.join(OUT, "README.md"))

    from pathlib import Path
    model = load_model(Path(OUT))
    with open(os.path.join(SRC, "golden.json")) as f:
        hf = json.load(f)
    with open(os.path.join(TV, "preprocess.json")) as f:
        pre = {c["name"]: c for c in json.load(f)["cases"]}

    prompts = []
    for pi, hp in enumerate(hf["prompts"]):
        pvs = [np.fromfile(os.path.join(TV, c + ".f32"), dtype="<f4").reshape(pre[c]["n_patches"], pre[c]["patch_dim"])
               for c in hp["images"]]
        pv = mx.array(np.concatenate(pvs, 0))
        thw = mx.array(np.array(hp["grid_thw"], dtype=np.int32))
        P = hp["prompt_len"]
        toks = list(hp["tokens"][:P])
        feat_files = []
        off = 0
        for ii, c in enumerate(hp["images"]):
            n = pre[c]["n_patches"]
            f = model.vision_tower(pv[off:off + n], thw[ii:ii + 1], output_hidden_states=False)
            mx.eval(f)
            fn = f"feat_{pi}_{ii}.f32"
            write_f32(os.path.join(OUT, fn), np.array(f))
            feat_files.append(fn)
            off += n

        def forward(ids):
            out = model(mx.array([ids]), pixel_values=pv, image_grid_thw=thw)
            lg = out.logits if hasattr(out, "logits") else out
            mx.eval(lg)
            return np.array(lg[0].astype(mx.float32))

        for _ in range(N_GEN):
            toks.append(int(forward(toks)[-1].argmax()))
        logits = forward(toks)
        am = logits.argmax(-1)
        assert all(am[i] == toks[i + 1] for i in range(P - 1, len(toks) - 1)), "greedy vs full forward disagree"
        srt = np.sort(logits[P - 1:], -1)
        margin = float((srt[:, -1] - srt[:, -2]).min())
        pos, delta = model.language_model.get_rope_index(mx.array([toks]), thw, None, None)
        pos = np.array(pos)[:, 0].astype(np.int64)
        delta = int(np.array(delta).reshape(-1)[0])
        prompts.append({"images": hp["images"], "grid_thw": hp["grid_thw"], "tokens": toks, "prompt_len": P,
                        "positions": pos.tolist(), "rope_delta": delta,
                        "features": feat_files, "feature_dim": int(np.array(model.vision_tower(
                            pv[:pre[hp["images"][0]]["n_patches"]], thw[:1])).shape[1]),
                        "logits": [[float(f"{v:.7g}") for v in row] for row in logits]})
        print(f"mlx q4: images {hp['images']} prompt {P}, gen {toks[P:]} (HF f32: {hp['tokens'][P:]}), "
              f"min greedy margin {margin:.3g}")
    with open(os.path.join(OUT, "golden.json"), "w") as f:
        json.dump({"generator": "mlx-vlm 0.7.10 (mlx 0.32.4, CPU)", "q_bits": Q_BITS, "q_group_size": Q_GROUP,
                   "prompts": prompts}, f)


if __name__ == "__main__":
    sys.exit(main())
