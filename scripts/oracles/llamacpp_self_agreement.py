#!/usr/bin/env python3
"""How well does llama.cpp agree with itself? Re-runs the 20 SmolLM2 prompts of
tests/data/smollm2/llamacpp_golden.json through llama-cpp-python with other
attention settings (flash attention on; f32 KV cache) and counts prompts whose
32 greedy tokens equal the golden run, teacher-forced top-1 agreement, and
both away from near ties (the golden's top-1/top-2 margin >= NEAR_TIE).
This is the yardstick for the agreement our own engine reaches.
Run with the reference venv: ~/.cache/vllm-metal/venv-ref/bin/python scripts/oracles/llamacpp_self_agreement.py
"""
import json
import os

import numpy as np
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests/data/smollm2/llamacpp_golden.json")
NEAR_TIE = 0.5   # as tests/c/test_smollm2_reference.c
MODEL = os.path.expanduser("~/.cache/vllm-metal/SmolLM2-135M-Instruct.Q4_1.gguf")


def main():
    golden = json.load(open(GOLDEN))
    for name, extra in [("flash_attn", dict(flash_attn=True)), ("f32_kv_cache", dict(type_k=0, type_v=0))]:
        llm = Llama(model_path=MODEL, n_ctx=512, n_threads=2, n_threads_batch=2, n_batch=512,
                    logits_all=True, verbose=False, **extra)
        equal = tf_same = tf_total = conf_same = conf_total = conf_diverged = 0
        for p in golden["prompts"]:
            toks = p["prompt_tokens"]
            llm.reset()
            llm.eval(toks)
            gen = []
            for _ in range(len(p["greedy_tokens"])):
                t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                gen.append(t)
                llm.eval([t])
            equal += gen == p["greedy_tokens"]
            margin = p["teacher_forced_margin"]
            if gen != p["greedy_tokens"]:
                first = next(i for i, (a, b) in enumerate(zip(gen, p["greedy_tokens"])) if a != b)
                conf_diverged += margin[len(toks) - 1 + first] >= NEAR_TIE
            allt = toks + p["greedy_tokens"]
            llm.reset()
            llm.eval(allt)
            top1 = np.array(llm.scores[:len(allt)]).argmax(axis=1)
            ref = np.array(p["teacher_forced_top1"])
            tf_same += int((top1 == ref).sum())
            tf_total += len(allt)
            sure = np.array(margin[:len(allt)]) >= NEAR_TIE
            conf_same += int((top1 == ref)[sure].sum())
            conf_total += int(sure.sum())
        print(f"llama.cpp {name:13s} vs llama.cpp default: {equal}/{len(golden['prompts'])} prompts with equal "
              f"greedy tokens, teacher-forced top-1 {tf_same}/{tf_total} ({100.0 * tf_same / tf_total:.2f}%); "
              f"where the default run's margin >= {NEAR_TIE}: top-1 {conf_same}/{conf_total}, greedy runs that "
              f"left it there: {conf_diverged}")


if __name__ == "__main__":
    main()
