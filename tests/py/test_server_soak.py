"""The server under load: 64 concurrent streaming clients (the openai SDK, one
thread each) loop over short streaming requests for SOAK_SECONDS (60); every
request must end cleanly, and afterwards the KV pool is empty
(vllm:kv_cache_usage_perc 0) and the server's RSS is back near its idle value.
A client killed mid-stream (SIGKILL, so the kernel closes its socket) must
have its request aborted and its blocks freed, as /metrics shows.

Env: VLLM_METAL_BIN, VLLM_METAL_TEST_MODEL; VLLM_METAL_SOAK_SECONDS (60).
"""
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from server_util import running_server

openai = pytest.importorskip("openai")
parser = pytest.importorskip("prometheus_client.parser")

BIN = os.environ.get("VLLM_METAL_BIN", os.path.join(os.path.dirname(__file__), "../../build/vllm-metal"))
MODEL = os.environ.get("VLLM_METAL_TEST_MODEL",
                       os.path.expanduser("~/.cache/vllm-metal/SmolLM2-135M-Instruct.Q4_1.gguf"))
NAME = "smol"
KEY = "soak-key"
CLIENTS = 64
SECONDS = float(os.environ.get("VLLM_METAL_SOAK_SECONDS", "60"))
# 64 streams of at most ~60 prompt + 16 generated tokens need at most 5 blocks
# of 16 each (320); the pool has room for all of them with no preemption.
BLOCK_SIZE = 16
BLOCKS = CLIENTS * 5 + 1
BATCH_TOKENS = 512
# The KV pool is committed lazily (cpu_buf_alloc: pages cost memory when first
# written), and blocks are handed out least-recently-freed first, so the soak
# makes resident pool pages that idle had never touched: up to the pool's
# size, computed from the model below. On top of that RSS may keep what glibc
# holds in its per-thread arenas, the activation scratch touched by bigger
# batches (--max-num-batched-tokens 512 keeps it small) and connection
# threads' stacks: RSS_MARGIN_MIB.
RSS_MARGIN_MIB = 48

pytestmark = pytest.mark.skipif(not (os.path.exists(BIN) and os.path.exists(MODEL)),
                                reason="needs the built binary and the test model")


def kv_bytes_per_token(model):
    """K+V bytes per token over all layers, from GGUF metadata (f16 cache) or
    config.json (f32), as src/model/decoder.c sizes its KV buffers."""
    import json
    import struct
    if os.path.isdir(model):
        c = json.load(open(os.path.join(model, "config.json")))
        hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        return c["num_hidden_layers"] * 2 * c.get("num_key_value_heads", c["num_attention_heads"]) * hd * 4
    meta = {}
    with open(model, "rb") as f:
        def rd(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]

        def rstr():
            return f.read(rd("Q")).decode("utf-8", "replace")

        scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

        def value(t):
            if t in scalar:
                return rd(scalar[t])
            if t == 8:
                return rstr()
            if t == 9:
                et, n = rd("I"), rd("Q")
                if et in scalar:
                    f.seek(n * struct.calcsize(scalar[et]), 1)
                    return None
                return [value(et) for _ in range(n)]
            raise ValueError(f"GGUF value type {t}")

        assert f.read(4) == b"GGUF"
        rd("I"); rd("Q")
        for _ in range(rd("Q")):
            k = rstr()
            meta[k] = value(rd("I"))
    a = meta["general.architecture"]
    heads = meta[f"{a}.attention.head_count"]
    hd = meta.get(f"{a}.attention.key_length") or meta[f"{a}.embedding_length"] // heads
    kv = meta.get(f"{a}.attention.head_count_kv", heads)
    return meta[f"{a}.block_count"] * 2 * kv * hd * 2


@pytest.fixture(scope="module")
def server():
    with running_server(BIN, ["--model", MODEL, "--served-model-name", NAME,
                              "--api-key", KEY, "--max-model-len", "512", "--max-num-seqs", str(CLIENTS),
                              "--num-gpu-blocks-override", str(BLOCKS), "--block-size", str(BLOCK_SIZE),
                              "--max-num-batched-tokens", str(BATCH_TOKENS)], "soak") as s:
        yield s


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


def metrics(base):
    """/metrics through prometheus_client's parser -> {(name, labels...): value}."""
    text = requests.get(base + "/metrics", timeout=10).text
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("model_name") == NAME:
                key = (s.name,) + tuple(sorted((k, v) for k, v in s.labels.items()
                                               if k not in ("model_name", "engine")))
                out[key] = s.value
    return out


def wait_idle(base, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = metrics(base)
        if m[("vllm:num_requests_running",)] == 0 and m[("vllm:num_requests_waiting",)] == 0:
            return m
        time.sleep(0.2)
    pytest.fail("requests still running after the clients finished")


PROMPTS = ["Tell me about the sea.", "Name three colours.", "What is two plus two?", "Write a haiku about rain.",
           "Why is the sky blue?", "Say something kind.", "List some fruits.", "Describe a cat in one line."]


def test_64_streaming_clients(server):
    base, pid = server["base"], server["proc"].pid
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)
    # one burst of 64 concurrent requests first, so that idle RSS includes what a
    # full batch touches once (activation scratch and logits rows, connection
    # threads, malloc arenas); only the KV pool's pages are still mostly new
    def warm(i):
        list(client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": PROMPTS[i % 8]}],
                                            max_tokens=2, stream=True))
    warmers = [threading.Thread(target=warm, args=(i,)) for i in range(CLIENTS)]
    for t in warmers:
        t.start()
    for t in warmers:
        t.join(120)
    wait_idle(base)
    time.sleep(0.5)
    idle = rss_mib(pid)
    m0 = metrics(base)

    peak = [idle]
    stop_sampling = threading.Event()

    def sampler():
        while not stop_sampling.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            time.sleep(0.1)

    done = [0] * CLIENTS
    tokens = [0] * CLIENTS
    errors = []
    t_end = time.time() + SECONDS

    def worker(i):
        rng = random.Random(i)
        try:
            while time.time() < t_end:
                max_tokens = rng.randint(4, 16)
                prompt = PROMPTS[(i + done[i]) % len(PROMPTS)]
                finish = None
                if (i + done[i]) % 2:
                    stream = client.chat.completions.create(
                        model=NAME, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                        temperature=0.8, stream=True, stream_options={"include_usage": True})
                    usage = None
                    for chunk in stream:
                        if chunk.choices and chunk.choices[0].finish_reason:
                            finish = chunk.choices[0].finish_reason
                        if chunk.usage:
                            usage = chunk.usage
                    assert usage is not None and 1 <= usage.completion_tokens <= max_tokens, usage
                    tokens[i] += usage.completion_tokens
                else:
                    n = 0
                    for chunk in client.completions.create(model=NAME, prompt=prompt, max_tokens=max_tokens,
                                                           temperature=0.8, stream=True):
                        if chunk.choices[0].text:
                            n += 1
                        if chunk.choices[0].finish_reason:
                            finish = chunk.choices[0].finish_reason
                    tokens[i] += n
                assert finish in ("stop", "length"), finish
                done[i] += 1
        except Exception as e:  # noqa: BLE001 - reported below with the client's number
            errors.append(f"client {i}: {type(e).__name__}: {e}")

    samp = threading.Thread(target=sampler, daemon=True)
    samp.start()
    t0 = time.time()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SECONDS + 120)
    elapsed = time.time() - t0
    stop_sampling.set()
    samp.join()
    assert not any(t.is_alive() for t in threads), "clients hung"
    assert not errors, errors[:5]

    m = wait_idle(base)
    time.sleep(0.5)
    after = rss_mib(pid)
    total = sum(done)
    gen = m[("vllm:generation_tokens_total",)] - m0[("vllm:generation_tokens_total",)]
    prompt = m[("vllm:prompt_tokens_total",)] - m0[("vllm:prompt_tokens_total",)]
    pool = (BLOCKS - 1) * BLOCK_SIZE * kv_bytes_per_token(MODEL) / 2 ** 20
    print(f"\nsoak: {CLIENTS} clients x {SECONDS:.0f} s ({elapsed:.1f} s): {total} requests completed "
          f"({total / elapsed:.1f} req/s), {gen:.0f} tokens generated ({gen / elapsed:.1f} tok/s), "
          f"{prompt:.0f} prompt tokens; RSS idle {idle:.1f} MiB, peak {peak[0]:.1f} MiB, after {after:.1f} MiB "
          f"(allowed: idle + KV pool {pool:.1f} MiB + {RSS_MARGIN_MIB} MiB)")
    assert all(d > 0 for d in done), done
    assert m[("vllm:kv_cache_usage_perc",)] == 0
    ok = sum(m[("vllm:request_success_total", ("finished_reason", r))] -
             m0[("vllm:request_success_total", ("finished_reason", r))] for r in ("stop", "length"))
    assert ok == total
    assert m[("vllm:request_success_total", ("finished_reason", "abort"))] == \
        m0[("vllm:request_success_total", ("finished_reason", "abort"))]
    assert m[("vllm:e2e_request_latency_seconds_count",)] - m0[("vllm:e2e_request_latency_seconds_count",)] == total
    assert after <= idle + pool + RSS_MARGIN_MIB, (idle, peak[0], after, pool)
    # and it still serves
    out = client.completions.create(model=NAME, prompt="Still there?", max_tokens=2)
    assert out.choices[0].finish_reason in ("stop", "length")


KILLED_CLIENT = r"""
import json, sys, urllib.request
print("ready", flush=True)
sys.stdin.readline()   # started: wait for the go, so that the four requests arrive together
req = urllib.request.Request(sys.argv[1] + "/v1/completions", method="POST",
    headers={"Authorization": "Bearer " + sys.argv[2], "Content-Type": "application/json"},
    data=json.dumps({"model": sys.argv[3], "prompt": "Write a very long story:", "max_tokens": 400,
                     "ignore_eos": True, "stream": True}).encode())
with urllib.request.urlopen(req) as r:
    n = 0
    for line in r:
        if line.startswith(b"data: {"):
            n += 1
            if n == 3:
                print("streaming", flush=True)
"""


def test_killed_client_frees_blocks(server):
    base = server["base"]
    m0 = wait_idle(base)
    assert m0[("vllm:kv_cache_usage_perc",)] == 0
    aborted0 = m0[("vllm:request_success_total", ("finished_reason", "abort"))]
    # the clients start first (a python start can take a second on a busy
    # box), then send their requests together: none may finish its 400
    # tokens before the last one streams
    procs = [subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, base, KEY, NAME], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE) for _ in range(4)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == b"ready"
        for p in procs:
            p.stdin.write(b"go\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout.readline().strip() == b"streaming"
        busy = metrics(base)
        assert busy[("vllm:num_requests_running",)] == 4
        assert busy[("vllm:kv_cache_usage_perc",)] > 0
        for p in procs:
            p.send_signal(signal.SIGKILL)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    # the engine frees the blocks at its next step; the server counts the abort
    # when its connection thread notices (either may come first)
    deadline = time.time() + 30
    while time.time() < deadline:
        m = metrics(base)
        if m[("vllm:num_requests_running",)] == 0 and m[("vllm:kv_cache_usage_perc",)] == 0 and \
                m[("vllm:request_success_total", ("finished_reason", "abort"))] == aborted0 + 4:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"killed clients' requests not aborted or their blocks not freed: {m}")
    # each stream was cut short of its 400 tokens
    assert m[("vllm:generation_tokens_total",)] - m0[("vllm:generation_tokens_total",)] < 4 * 400
