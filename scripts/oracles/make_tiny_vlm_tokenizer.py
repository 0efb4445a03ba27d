#!/usr/bin/env python3
"""make_tiny_vlm_tokenizer.py - a minimal tokenizer.json + chat template for the tiny
random-weight VLMs in tests/data/tiny_vlm/ (which make_tiny_vlm.py writes without one),
so the server can run them from chat requests.

Vocabulary (256 ids, as the models' vocab_size): every id is one token, so any golden
token sequence is spelled by a string (tiny_vlm_text(ids) below, also in the tests):
  0 <|endoftext|>  1 <s> (bos)  2 </s> (eos)
  250 <|vision_start|>  251 <|vision_end|>  252 <|image_pad|>  253 <|video_pad|>
  254 <|im_start|>  255 <|im_end|>      (ids from the models' config.json)
  32..126  the printable ASCII character itself
  others   the character U+0100 + id
A BPE model without merges or pre-tokenizer: each character is its own token.
The chat template is Qwen2-VL's image handling without the system prompt:
bos, then every message's text, each image part as <|vision_start|><|image_pad|><|vision_end|>.
Standard library only. Run from the repo root: python3 scripts/oracles/make_tiny_vlm_tokenizer.py
"""
import json
import os

SPECIAL = {0: "<|endoftext|>", 1: "<s>", 2: "</s>", 250: "<|vision_start|>", 251: "<|vision_end|>",
           252: "<|image_pad|>", 253: "<|video_pad|>", 254: "<|im_start|>", 255: "<|im_end|>"}

TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if message['content'] is string %}"
            "{{ message['content'] }}{% else %}{% for content in message['content'] %}"
            "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
            "<|vision_start|><|image_pad|><|vision_end|>"
            "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}")


def token_text(i):
    if i in SPECIAL:
        return SPECIAL[i]
    return chr(i) if 32 <= i <= 126 else chr(0x100 + i)


def tiny_vlm_text(ids):
    return "".join(token_text(i) for i in ids)


def main():
    for model in ("qwen2_vl", "qwen2_5_vl"):
        d = os.path.join("tests", "data", "tiny_vlm", model)
        cfg = json.load(open(os.path.join(d, "config.json")))
        assert cfg["image_token_id"] == 252 and cfg["vision_start_token_id"] == 250
        assert cfg["vision_end_token_id"] == 251 and cfg["video_token_id"] == 253
        vocab = {token_text(i): i for i in range(256)}
        tok = {
            "version": "1.0",
            "truncation": None, "padding": None,
            "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for i, t in sorted(SPECIAL.items())],
            "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": {"type": "Fuse"},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": []},
        }
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            json.dump(tok, f, ensure_ascii=False, indent=1)
            f.write("\n")
        tc = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<|endoftext|>",
              "add_bos_token": False, "chat_template": TEMPLATE,
              "tokenizer_class": "PreTrainedTokenizerFast"}
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(tc, f, ensure_ascii=False, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
