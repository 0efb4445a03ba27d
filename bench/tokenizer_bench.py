#!/usr/bin/env python3
"""tokenizer_bench.py - encode throughput of our C tokenizer vs HF `tokenizers`, one thread.

    VLLM_METAL_LIB=build/libvllm_metal.so ~/.cache/vllm-metal/venv/bin/python bench/tokenizer_bench.py

Text: English prose (the license texts under /usr/share/common-licenses when present,
else generated), about 2 MB, encoded as lines (one call per line, as a server sees
requests) and as one string. Both sides start with a cold word cache; best of 3.
"""
import ctypes
import glob
import os
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
import tokenizer_corpus  # noqa: E402
import tokenizers  # noqa: E402
import test_tokenizer as tt  # noqa: E402


def english(n_bytes=2 << 20):
    parts = []
    for f in sorted(glob.glob("/usr/share/common-licenses/*")):
        try:
            parts.append(open(f, encoding="utf-8").read())
        except (UnicodeDecodeError, IsADirectoryError):
            pass
    text = "\n".join(parts) or tokenizer_corpus.english_text(n_bytes)
    while len(text.encode()) < n_bytes:
        text += "\n" + text
    return text.encode()[:n_bytes].decode("utf-8", "ignore")


def best(f, reps=3):
    t = []
    for _ in range(reps):
        t0 = time.perf_counter(); f(); t.append(time.perf_counter() - t0)
    return min(t)


def main():
    lib = tt._load_lib()
    text = english()
    lines = text.splitlines(keepends=True)
    mb = len(text.encode()) / 1e6
    print("text: %.2f MB, %d lines" % (mb, len(lines)))
    for fam in ["smollm2", "llama3", "qwen2", "spm"]:
        path = os.path.join(tt.DATA, fam, "tokenizer.json")
        hf = tokenizers.Tokenizer.from_file(path)
        ours = tt.CTokenizer.load_json(lib, path)
        data_lines = [l.encode() for l in lines]
        out = (ctypes.c_int32 * (len(text.encode()) + 16))()
        err = ctypes.create_string_buffer(256)

        def ours_lines():
            for d in data_lines:
                lib.vm_tokenizer_encode_into(ours.h, d, len(d), 0, out, len(out), err, 256)

        def hf_lines():
            for l in lines:
                hf.encode(l, add_special_tokens=False)

        whole = text.encode()
        t_ours_l, t_hf_l = best(ours_lines), best(hf_lines)
        t_ours_w = best(lambda: lib.vm_tokenizer_encode_into(ours.h, whole, len(whole), 0, out, len(out), err, 256))
        t_hf_w = best(lambda: hf.encode(text, add_special_tokens=False))
        assert ours.encode(text, False) == hf.encode(text, add_special_tokens=False).ids
        print("%-8s per line: ours %6.1f MB/s  hf %6.1f MB/s  ratio %.2fx | one string: ours %6.1f MB/s"
              "  hf %6.1f MB/s  ratio %.2fx" % (fam, mb / t_ours_l, mb / t_hf_l, t_hf_l / t_ours_l,
                                               mb / t_ours_w, mb / t_hf_w, t_hf_w / t_ours_w))
        ours.close()


if __name__ == "__main__":
    main()
