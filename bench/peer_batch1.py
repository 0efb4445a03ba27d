#!/usr/bin/env python3
"""peer_batch1.py - one batch-1 measurement of a peer, printed as one JSON line.

  peer_batch1.py llamacpp --model M.gguf --threads T --prompt-ids 1,2,... --decode 128
  peer_batch1.py mlx      --model DIR    --threads T --prompt-ids 1,2,... --decode 128

Same protocol as `vllm-metal generate --prompt-ids`: the whole prompt in one
forward pass (prefill tokens/s = prompt tokens / that time), then `decode`
greedy steps of one token each through the KV cache (decode tokens/s =
steps / their time). Wall-clock around the library calls, model load excluded.
Run by bench/bench.py in a fresh process per measurement.
"""
import argparse
import json
import os
import time


def llamacpp(a, ids):
    import numpy as np
    import llama_cpp
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=len(ids) + a.decode + 16, n_batch=len(ids),
                          n_ubatch=len(ids), n_threads=a.threads, n_threads_batch=a.threads,
                          verbose=False)
    n_vocab = llm.n_vocab()

    def last_argmax():   # the last row's logits, straight from llama.cpp
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    t0 = time.perf_counter()
    llm.eval(ids)                      # one llama_decode of the whole prompt
    tok = last_argmax()
    t1 = time.perf_counter()
    out = []
    for _ in range(a.decode):
        out.append(tok)
        llm.eval([tok])
        tok = last_argmax()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, out, f"llama-cpp-python {llama_cpp.__version__}"


def mlx(a, ids):
    import mlx.core as mx
    mx.set_default_device(mx.cpu)
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache
    model, _ = load(a.model)
    cache = make_prompt_cache(model)
    t0 = time.perf_counter()
    logits = model(mx.array([ids]), cache=cache)
    tok = mx.argmax(logits[0, -1])
    mx.eval(tok)
    t1 = time.perf_counter()
    out = []
    for _ in range(a.decode):
        out.append(int(tok.item()))
        logits = model(tok.reshape(1, 1), cache=cache)
        tok = mx.argmax(logits[0, -1])
        mx.eval(tok)
    t2 = time.perf_counter()
    import mlx_lm
    return t1 - t0, t2 - t1, out, f"mlx {mx.__version__} mlx-lm {mlx_lm.__version__} (cpu)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("peer", choices=["llamacpp", "mlx"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt-ids", required=True)
    ap.add_argument("--decode", type=int, default=128)
    a = ap.parse_args()
    ids = [int(x) for x in a.prompt_ids.split(",")]
    t_prefill, t_decode, out, version = (llamacpp if a.peer == "llamacpp" else mlx)(a, ids)
    print(json.dumps({"prefill_tps": len(ids) / t_prefill, "decode_tps": a.decode / t_decode,
                      "tokens": out[:16], "version": version}))


if __name__ == "__main__":
    # MLX's CPU backend and any BLAS underneath: the same thread count as everyone
    main()
