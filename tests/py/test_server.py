"""The OpenAI-compatible server, end to end: the built binary on a free port,
driven by the official openai SDK (and requests/raw sockets for the edges).

Env: VLLM_METAL_BIN (build/vllm-metal), VLLM_METAL_TEST_MODEL (the GGUF).
"""
import json
import os
import re
import socket
import subprocess
import threading
import time

import pytest
import requests

from server_util import running_server

openai = pytest.importorskip("openai")

BIN = os.environ.get("VLLM_METAL_BIN", os.path.join(os.path.dirname(__file__), "../../build/vllm-metal"))
MODEL = os.environ.get("VLLM_METAL_TEST_MODEL",
                       os.path.expanduser("~/.cache/vllm-metal/SmolLM2-135M-Instruct.Q4_1.gguf"))
NAME = "smol"
KEY = "test-key-123"
MAX_LEN = 1024

pytestmark = pytest.mark.skipif(not (os.path.exists(BIN) and os.path.exists(MODEL)),
                                reason="needs the built binary and the test model")


@pytest.fixture(scope="module")
def server():
    with running_server(BIN, ["--model", MODEL, "--served-model-name", NAME, "smol-alias",
                              "--api-key", KEY, "--max-model-len", str(MAX_LEN),
                              "--num-gpu-blocks-override", "512", "--max-num-seqs", "16"], "server") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def post(server, path, body, key=KEY, raw=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        headers["Content-Type"] = "application/json"
        return requests.post(server["base"] + path, data=raw, headers=headers, timeout=60)
    return requests.post(server["base"] + path, json=body, headers=headers, timeout=60)


def metric(text, name, **labels):
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"([^{ ]+)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        if all(f'{k}="{v}"' in (m.group(2) or "") for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    assert found, f"{name} {labels} missing from /metrics"
    return total


def assert_error(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert err["code"] == status
    assert "type" in err and "param" in err
    return err


def assert_alive(client):
    out = client.completions.create(model=NAME, prompt="Hello", max_tokens=1, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length")


# ---------------------------------------------------------------- basics

def test_health_version_models(server, client):
    assert requests.get(server["base"] + "/health").status_code == 200
    v = requests.get(server["base"] + "/version").json()
    assert isinstance(v["version"], str)
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME, "smol-alias"]
    alias = client.completions.create(model="smol-alias", prompt="Hi", max_tokens=1)
    assert alias.model == NAME
    assert models.data[0].owned_by == "vllm"


def test_completion_greedy_matches_offline_engine(server, client):
    prompt = "The capital of France is"
    tok = post(server, "/tokenize", {"model": NAME, "prompt": prompt}).json()
    ids = tok["tokens"]
    assert tok["count"] == len(ids) and tok["max_model_len"] == MAX_LEN
    n = 8
    out = client.completions.create(model=NAME, prompt=prompt, max_tokens=n, temperature=0,
                                    extra_body={"ignore_eos": True})
    c = out.choices[0]
    assert out.id.startswith("cmpl-") and out.object == "text_completion" and out.model == NAME
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == n
    assert out.usage.total_tokens == len(ids) + n
    assert c.finish_reason == "length"
    # the offline engine (the CLI's generate command) on the same prompt
    g = subprocess.run([BIN, "generate", "--model", MODEL, "--prompt", prompt, "--max-tokens", str(n),
                        "--temperature", "0", "--ignore-eos", "--max-model-len", str(MAX_LEN),
                        "--max-num-seqs", "4"], capture_output=True, text=True, timeout=120)
    assert g.returncode == 0, g.stderr
    text = g.stdout[:-1] if g.stdout.endswith("\n") else g.stdout
    assert c.text == text
    # the same prompt as token ids gives the same text
    out2 = client.completions.create(model=NAME, prompt=ids, max_tokens=n, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert out2.choices[0].text == text


def test_chat(client):
    out = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Say hi."}],
                                         max_tokens=6, temperature=0)
    assert out.id.startswith("chatcmpl-") and out.object == "chat.completion"
    assert out.system_fingerprint
    m = out.choices[0].message
    assert m.role == "assistant" and isinstance(m.content, str) and m.content
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.completion_tokens <= 6
    # max_completion_tokens wins over max_tokens
    out2 = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Say hi."}],
                                          max_tokens=6, max_completion_tokens=2, temperature=0)
    assert out2.usage.completion_tokens <= 2


def test_chat_image_on_text_model_is_400(server, client):
    png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
    r = post(server, "/v1/chat/completions", {"model": NAME, "max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "what is it?"},
                                     {"type": "image_url", "image_url": {"url": png}}]}]})
    assert r.status_code == 400, r.text
    assert "does not take images" in r.json()["error"]["message"]
    ok = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert ok.choices[0].finish_reason in ("length", "stop")


def test_chat_stream_with_usage(client):
    stream = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Count to five."}],
                                            max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals and finals[-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    u = chunks[-1].usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    full = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Count to five."}],
                                          max_tokens=6, temperature=0)
    assert full.choices[0].message.content == text
    assert full.usage.completion_tokens == u.completion_tokens


def test_completion_stream(client):
    stream = client.completions.create(model=NAME, prompt="One, two, three,", max_tokens=6, temperature=0,
                                       stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks)
    full = client.completions.create(model=NAME, prompt="One, two, three,", max_tokens=6, temperature=0)
    assert text == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason


def test_n_and_seed(client):
    kw = dict(model=NAME, prompt="My favourite colour is", max_tokens=5, temperature=1.0, n=2, seed=1234)
    a = client.completions.create(**kw)
    assert sorted(c.index for c in a.choices) == [0, 1]
    assert a.usage.completion_tokens <= 10
    b = client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    ch = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], n=2,
                                        max_tokens=3, temperature=1.0, seed=7)
    assert sorted(c.index for c in ch.choices) == [0, 1]


def test_stop_strings(client):
    prompt = "1, 2, 3, 4, 5,"
    full = client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    assert len(full) > 4
    stop = full[3:5]
    cut = full[:full.index(stop)]
    out = client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0, stop=[stop])
    c = out.choices[0]
    assert c.text == cut and c.finish_reason == "stop"
    assert c.model_extra.get("stop_reason") == stop
    inc = client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0, stop=stop,
                                    extra_body={"include_stop_str_in_output": True})
    assert inc.choices[0].text == cut + stop


def test_logprobs(client):
    out = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hello"}],
                                         max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert e.bytes == list(e.token.encode())
        # greedy: the chosen token is the most likely one
        assert abs(e.top_logprobs[0].logprob - e.logprob) < 1e-4
    assert "".join(e.token for e in content) == out.choices[0].message.content
    comp = client.completions.create(model=NAME, prompt="The sky is", max_tokens=4, temperature=0, logprobs=2)
    lp = comp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert "".join(lp.tokens) == comp.choices[0].text
    assert all(len(t) >= 2 for t in lp.top_logprobs)


def test_extra_sampling_fields(client):
    out = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=4, temperature=0.8,
                                    seed=3, extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1,
                                                        "min_tokens": 4, "stop_token_ids": [2],
                                                        "skip_special_tokens": True})
    assert out.usage.completion_tokens == 4


def test_tokenize_detokenize(server):
    text = "Hello world, this is vllm-metal!"
    t = post(server, "/tokenize", {"model": NAME, "prompt": text, "return_token_strs": True}).json()
    assert len(t["token_strs"]) == t["count"]
    d = post(server, "/detokenize", {"model": NAME, "tokens": t["tokens"]}).json()
    assert d["prompt"] == text
    chat = post(server, "/tokenize", {"model": NAME, "messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] > 3
    assert_error(post(server, "/detokenize", {"tokens": [10 ** 9]}), 400)
    assert_error(post(server, "/detokenize", {"tokens": "abc"}), 400)


def test_metrics_move(server, client):
    before = requests.get(server["base"] + "/metrics").text
    p0 = metric(before, "vllm:prompt_tokens_total", model_name=NAME)
    g0 = metric(before, "vllm:generation_tokens_total", model_name=NAME)
    s0 = metric(before, "vllm:request_success_total", model_name=NAME)
    h0 = metric(before, "vllm:time_to_first_token_seconds_count", model_name=NAME)
    client.completions.create(model=NAME, prompt="Metrics are", max_tokens=3, temperature=0,
                              extra_body={"ignore_eos": True})
    after = requests.get(server["base"] + "/metrics").text
    assert metric(after, "vllm:prompt_tokens_total", model_name=NAME) > p0
    assert metric(after, "vllm:generation_tokens_total", model_name=NAME) >= g0 + 3
    assert metric(after, "vllm:request_success_total", model_name=NAME) >= s0 + 1
    assert metric(after, "vllm:time_to_first_token_seconds_count", model_name=NAME) >= h0 + 1
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
                 "vllm:inter_token_latency_seconds_count", "vllm:e2e_request_latency_seconds_count"):
        metric(after, name, model_name=NAME)
    assert 'vllm:time_to_first_token_seconds_bucket{engine="0",model_name="smol",le="+Inf"}' in after
    assert 'le="2560"' in after  # vLLM's last finite TTFT bucket


# ---------------------------------------------------------------- the SDK's typed objects, strictly

def strict(cls, raw):
    """raw JSON -> the SDK's pydantic class with strict validation (no coercion)."""
    return cls.model_validate(raw, strict=True)


def test_sdk_typed_objects_strict(server, client):
    from openai.types import Completion, Model
    from openai.types.chat import ChatCompletion

    raw = client.models.with_raw_response.list()
    for m in raw.http_response.json()["data"]:
        assert strict(Model, m).owned_by == "vllm"
    assert [m.id for m in raw.parse().data] == [NAME, "smol-alias"]

    # completions: n=2, logprobs=3, stop, echo off
    raw = client.completions.with_raw_response.create(model=NAME, prompt="Once upon a time", max_tokens=6, n=2,
                                                      logprobs=3, stop=["\n\n"], echo=False, temperature=0.7,
                                                      seed=11)
    c = strict(Completion, raw.http_response.json())
    assert c == raw.parse() or c.model_dump() == raw.parse().model_dump()
    assert [ch.index for ch in c.choices] == [0, 1]
    for ch in c.choices:
        lp = ch.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
        assert "".join(lp.tokens) == ch.text and not ch.text.startswith("Once upon")
        assert all(len(t) >= 3 for t in lp.top_logprobs)
    assert c.usage.completion_tokens == sum(len(ch.logprobs.tokens) for ch in c.choices)

    # chat: system prompt, max_completion_tokens, seed, logprobs + top_logprobs
    kw = dict(model=NAME, messages=[{"role": "system", "content": "You answer in one word."},
                                    {"role": "user", "content": "Name a colour."}],
              max_completion_tokens=5, temperature=1.0, seed=1234, logprobs=True, top_logprobs=2)
    raw = client.chat.completions.with_raw_response.create(**kw)
    a = strict(ChatCompletion, raw.http_response.json())
    assert a.usage.completion_tokens <= 5
    content = a.choices[0].logprobs.content
    assert len(content) == a.usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in content)
    b = client.chat.completions.create(**kw)
    assert b.choices[0].message.content == a.choices[0].message.content  # seed reproducibility
    assert [e.logprob for e in b.choices[0].logprobs.content] == pytest.approx([e.logprob for e in content])
    # the system prompt reaches the template
    tok_sys = post(server, "/tokenize", {"model": NAME, "messages": kw["messages"]}).json()["count"]
    assert a.usage.prompt_tokens == tok_sys


def sse_events(raw):
    """SSE body -> list of data payloads; asserts the framing on the way."""
    assert raw.endswith("\n\n"), raw[-200:]
    events = raw[:-2].split("\n\n")
    out = []
    for ev in events:
        if ev.startswith(":"):  # a comment (keep-alive ping)
            continue
        assert "\n" not in ev and ev.startswith("data: "), repr(ev)
        out.append(ev[len("data: "):])
    assert out and out[-1] == "[DONE]" and "[DONE]" not in out[:-1]
    return out


def test_streams_strict_and_curl_framing(server):
    from openai.types import Completion
    from openai.types.chat import ChatCompletionChunk

    def curl(path, body):
        r = subprocess.run(["curl", "-sS", "-N", "--max-time", "60", "-D", "-", "-H", f"Authorization: Bearer {KEY}",
                            "-H", "Content-Type: application/json", "-d", json.dumps(body),
                            server["base"] + path], capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, r.stderr
        head, _, payload = r.stdout.replace("\r\n", "\n").partition("\n\n")
        assert head.startswith("HTTP/1.1 200")
        assert re.search(r"(?im)^content-type: text/event-stream", head), head
        return sse_events(payload)

    ev = curl("/v1/chat/completions", {"model": NAME, "messages": [{"role": "system", "content": "Be brief."},
                                                                   {"role": "user", "content": "Count to three."}],
                                       "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True},
                                       "logprobs": True, "top_logprobs": 2})
    chunks = [strict(ChatCompletionChunk, json.loads(e)) for e in ev[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] in ("stop", "length")
    assert len({c.id for c in chunks}) == 1

    ev = curl("/v1/completions", {"model": NAME, "prompt": "One, two,", "max_tokens": 4, "n": 2, "logprobs": 2,
                                  "stream": True, "stream_options": {"include_usage": True}})
    seen = set()
    for e in ev[:-1]:
        d = json.loads(e)
        for ch in d["choices"]:
            seen.add(ch["index"])
        if any(ch["finish_reason"] is None for ch in d["choices"]):
            # the SDK's Completion types finish_reason without None, though OpenAI and vLLM
            # both send null mid-stream (the SDK builds stream chunks without validating);
            # everything else must validate
            try:
                strict(Completion, d)
            except Exception as exc:  # pydantic.ValidationError
                errs = exc.errors()
                assert all(x["loc"][-1] == "finish_reason" and x["input"] is None for x in errs), errs
        else:
            strict(Completion, d)
    assert seen == {0, 1}
    assert json.loads(ev[-2])["usage"]["completion_tokens"] >= 2


def test_metrics_prometheus_parser(server, client):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape():
        r = requests.get(server["base"] + "/metrics")
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
        fams = {f.name: f for f in text_string_to_metric_families(r.text)}
        return fams

    def value(fams, fam, sample, **labels):
        return sum(s.value for s in fams[fam].samples
                   if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))

    f0 = scrape()
    types = {n: f.type for n, f in f0.items()}
    for n in ("vllm:prompt_tokens", "vllm:generation_tokens", "vllm:request_success", "vllm:num_preemptions",
              "vllm:prefix_cache_queries", "vllm:prefix_cache_hits"):
        assert types[n] == "counter", (n, types.get(n))
    for n in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert types[n] == "gauge"
    hists = ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
             "vllm:e2e_request_latency_seconds")
    for n in hists:
        assert types[n] == "histogram"
    client.completions.create(model=NAME, prompt="Counting metrics", max_tokens=3, temperature=0,
                              extra_body={"ignore_eos": True})
    list(client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                        stream=True, extra_body={"ignore_eos": True}))
    f1 = scrape()
    assert value(f1, "vllm:prompt_tokens", "vllm:prompt_tokens_total", model_name=NAME) > \
        value(f0, "vllm:prompt_tokens", "vllm:prompt_tokens_total", model_name=NAME)
    assert value(f1, "vllm:generation_tokens", "vllm:generation_tokens_total", model_name=NAME) >= \
        value(f0, "vllm:generation_tokens", "vllm:generation_tokens_total", model_name=NAME) + 6
    assert value(f1, "vllm:request_success", "vllm:request_success_total", finished_reason="length") >= \
        value(f0, "vllm:request_success", "vllm:request_success_total", finished_reason="length") + 2
    for n in hists:
        samples = f1[n].samples
        buckets = [s for s in samples if s.name == n + "_bucket"]
        les = [s.labels["le"] for s in buckets]
        assert les[-1] == "+Inf" and len(set(les)) == len(les)
        assert [float(x) for x in les[:-1]] == sorted(float(x) for x in les[:-1])
        counts = [s.value for s in buckets]
        assert counts == sorted(counts)  # cumulative
        count = [s.value for s in samples if s.name == n + "_count"]
        total = [s.value for s in samples if s.name == n + "_sum"]
        assert len(count) == 1 and len(total) == 1 and count[0] == counts[-1] and total[0] >= 0
        assert all(s.labels["model_name"] == NAME and s.labels["engine"] == "0" for s in samples)
    c0 = value(f0, "vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_count")
    assert value(f1, "vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_count") >= c0 + 2
    t0 = value(f0, "vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count")
    assert value(f1, "vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count") >= t0 + 2


def test_prefix_cache_usage(client):
    long = "You are a careful assistant. " * 12
    client.completions.create(model=NAME, prompt=long + "A", max_tokens=1, temperature=0)
    out = client.completions.create(model=NAME, prompt=long + "B", max_tokens=1, temperature=0)
    assert out.usage.prompt_tokens_details.cached_tokens >= 16


# ---------------------------------------------------------------- errors

def test_auth(server):
    r = requests.get(server["base"] + "/v1/models")
    assert_error(r, 401)
    assert_error(requests.get(server["base"] + "/v1/models", headers={"Authorization": "Bearer nope"}), 401)
    bad = openai.OpenAI(base_url=server["base"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=NAME, prompt="x", max_tokens=1)
    assert requests.get(server["base"] + "/health").status_code == 200  # not under /v1


LONG = "word " * (MAX_LEN + 50)
MSG = [{"role": "user", "content": "x"}]
C, CH = "/v1/completions", "/v1/chat/completions"

# (id, method, path, body (dict: JSON with model added; bytes: sent as is), auth, status, param)
# auth: "ok" (the key), None (no header), or a header value.
BAD_REQUESTS = [
    ("malformed-json", "POST", CH, b"{not json", "ok", 400, None),
    ("json-array-body", "POST", C, b"[1, 2]", "ok", 400, None),
    ("empty-body", "POST", C, b"", "ok", 400, None),
    ("invalid-utf8", "POST", C, b'{"model": "smol", "prompt": "\xc3\x28", "max_tokens": 1}', "ok", 400, None),
    ("binary-garbage", "POST", C, b"\xff\xfe\x00garbage", "ok", 400, None),
    ("nan-literal", "POST", C, b'{"model": "smol", "prompt": "x", "temperature": NaN}', "ok", 400, None),
    ("nesting-100k-deep", "POST", C, b"[" * 100000 + b"]" * 100000, "ok", 400, None),
    ("max_tokens-string", "POST", C, {"prompt": "x", "max_tokens": "ten"}, "ok", 400, "max_tokens"),
    ("max_tokens-float", "POST", C, {"prompt": "x", "max_tokens": 1.5}, "ok", 400, "max_tokens"),
    ("max_tokens-negative", "POST", C, {"prompt": "x", "max_tokens": -5}, "ok", 400, "max_tokens"),
    ("max_tokens-zero", "POST", C, {"prompt": "x", "max_tokens": 0}, "ok", 400, "max_tokens"),
    ("max_tokens-huge", "POST", C, {"prompt": "x", "max_tokens": 10 ** 12}, "ok", 400, "max_tokens"),
    ("max_tokens-over-context", "POST", C, {"prompt": "hi", "max_tokens": MAX_LEN + 1}, "ok", 400, "max_tokens"),
    ("temperature-negative", "POST", C, {"prompt": "x", "temperature": -1}, "ok", 400, "temperature"),
    ("temperature-string", "POST", C, {"prompt": "x", "temperature": "hot"}, "ok", 400, "temperature"),
    ("top_p-zero", "POST", C, {"prompt": "x", "top_p": 0}, "ok", 400, "top_p"),
    ("top_p-over-1", "POST", C, {"prompt": "x", "top_p": 1.5}, "ok", 400, "top_p"),
    ("top_k-negative", "POST", C, {"prompt": "x", "top_k": -5}, "ok", 400, "top_k"),
    ("min_p-over-1", "POST", C, {"prompt": "x", "min_p": 2}, "ok", 400, "min_p"),
    ("repetition_penalty-zero", "POST", C, {"prompt": "x", "repetition_penalty": 0}, "ok", 400, "repetition_penalty"),
    ("presence_penalty-5", "POST", C, {"prompt": "x", "presence_penalty": 5}, "ok", 400, "presence_penalty"),
    ("n-zero", "POST", C, {"prompt": "x", "n": 0}, "ok", 400, "n"),
    ("n-huge", "POST", C, {"prompt": "x", "n": 10 ** 6}, "ok", 400, "n"),
    ("logprobs-100", "POST", C, {"prompt": "x", "logprobs": 100}, "ok", 400, "logprobs"),
    ("stop-int", "POST", C, {"prompt": "x", "stop": 3}, "ok", 400, "stop"),
    ("stream-string", "POST", C, {"prompt": "x", "stream": "yes"}, "ok", 400, "stream"),
    ("stop_token_ids-strings", "POST", C, {"prompt": "x", "stop_token_ids": ["a"]}, "ok", 400, "stop_token_ids"),
    ("seed-string", "POST", C, {"prompt": "x", "seed": "x"}, "ok", 400, "seed"),
    ("user-int", "POST", C, {"prompt": "x", "user": 5}, "ok", 400, "user"),
    ("stream_options-without-stream", "POST", C, {"prompt": "x", "stream_options": {"include_usage": True}}, "ok",
     400, "stream_options"),
    ("prompt-int", "POST", C, {"prompt": 5}, "ok", 400, "prompt"),
    ("prompt-empty-list", "POST", C, {"prompt": []}, "ok", 400, "prompt"),
    ("prompt-empty-string", "POST", C, {"prompt": ""}, "ok", 400, "prompt"),
    ("prompt-token-out-of-vocab", "POST", C, {"prompt": [10 ** 8]}, "ok", 400, "prompt"),
    ("prompt-missing", "POST", C, {"max_tokens": 3}, "ok", 400, "prompt"),
    ("prompt-over-max_model_len", "POST", C, {"prompt": LONG, "max_tokens": 1}, "ok", 400, "prompt"),
    ("body-10MB", "POST", C, {"prompt": "hello world " * (10 * 2 ** 20 // 12), "max_tokens": 1}, "ok", 400, "prompt"),
    ("model-unknown", "POST", C, {"model": "nope", "prompt": "x"}, "ok", 404, "model"),
    ("model-int", "POST", C, {"model": 5, "prompt": "x"}, "ok", 400, "model"),
    ("messages-string", "POST", CH, {"messages": "hi"}, "ok", 400, "messages"),
    ("messages-empty", "POST", CH, {"messages": []}, "ok", 400, "messages"),
    ("messages-missing", "POST", CH, {"max_tokens": 2}, "ok", 400, "messages"),
    ("message-not-object", "POST", CH, {"messages": ["hi"]}, "ok", 400, "messages"),
    ("message-no-role", "POST", CH, {"messages": [{"content": "no role"}]}, "ok", 400, "messages"),
    ("message-unknown-role", "POST", CH, {"messages": [{"role": "wizard", "content": "x"}]}, "ok", 400, "messages"),
    ("message-no-content", "POST", CH, {"messages": [{"role": "user"}]}, "ok", 400, "messages"),
    ("content-int", "POST", CH, {"messages": [{"role": "user", "content": 5}]}, "ok", 400, "messages"),
    ("content-object", "POST", CH, {"messages": [{"role": "user", "content": {"a": 1}}]}, "ok", 400, "messages"),
    ("content-part-unknown-type", "POST", CH, {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
     "ok", 400, "messages"),
    ("chat-over-max_model_len", "POST", CH, {"messages": [{"role": "user", "content": LONG}]}, "ok", 400,
     "messages"),
    ("top_logprobs-without-logprobs", "POST", CH, {"messages": MSG, "top_logprobs": 3}, "ok", 400, "top_logprobs"),
    ("top_logprobs-50", "POST", CH, {"messages": MSG, "logprobs": True, "top_logprobs": 50}, "ok", 400,
     "top_logprobs"),
    ("max_completion_tokens-negative", "POST", CH, {"messages": MSG, "max_completion_tokens": -1}, "ok", 400,
     "max_completion_tokens"),
    ("chat-n-string", "POST", CH, {"messages": MSG, "n": "two"}, "ok", 400, "n"),
    ("tool_choice-required", "POST", CH, {"messages": MSG, "tool_choice": "required"}, "ok", 400, "tool_choice"),
    ("response_format-json_schema", "POST", CH, {"messages": MSG, "response_format": {"type": "json_schema"}}, "ok",
     400, "response_format"),
    ("get-completions", "GET", C, None, "ok", 405, None),
    ("delete-chat", "DELETE", CH, None, "ok", 405, None),
    ("post-models", "POST", "/v1/models", None, "ok", 405, None),
    ("put-health", "PUT", "/health", None, None, 405, None),
    ("unknown-route", "GET", "/v1/nothing", None, "ok", 404, None),
    ("api-key-missing", "POST", C, {"prompt": "x", "max_tokens": 1}, None, 401, None),
    ("api-key-wrong", "POST", C, {"prompt": "x", "max_tokens": 1}, "Bearer nope", 401, None),
    ("api-key-basic-scheme", "GET", "/v1/models", None, f"Basic {KEY}", 401, None),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request(server, case):
    name, method, path, body, auth, status, param = case
    headers = {}
    if auth == "ok":
        headers["Authorization"] = f"Bearer {KEY}"
    elif auth:
        headers["Authorization"] = auth
    data = body
    if isinstance(body, dict):
        data = json.dumps(dict({"model": NAME}, **body)).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    r = requests.request(method, server["base"] + path, data=data, headers=headers, timeout=60)
    err = assert_error(r, status)
    assert set(r.json()) == {"error"} and set(err) == {"message", "type", "param", "code"}, r.text
    assert isinstance(err["type"], str) and err["type"]
    assert err["param"] == param, (err, param)
    if status == 405:
        assert r.headers.get("Allow")
    # still serving
    assert requests.get(server["base"] + "/v1/models", headers={"Authorization": f"Bearer {KEY}"},
                        timeout=10).status_code == 200


def test_bad_requests_leave_server_serving(server, client):
    assert len(BAD_REQUESTS) >= 25 and len({c[0] for c in BAD_REQUESTS}) == len(BAD_REQUESTS)
    assert_alive(client)
    chat = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert chat.choices[0].finish_reason in ("stop", "length")


def test_sdk_error_classes(server, client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model=NAME, prompt="x", max_tokens=1, temperature=-1)
    assert ei.value.status_code == 400
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=NAME, messages=[{"role": "wizard", "content": "x"}], max_tokens=1)
    assert ei.value.body["param"] == "messages"
    assert_alive(client)


def test_too_long(server, client):
    long = "word " * (MAX_LEN + 50)
    err = assert_error(post(server, "/v1/completions", {"model": NAME, "prompt": long, "max_tokens": 1}), 400)
    assert "maximum context length" in err["message"]
    assert_error(post(server, "/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": long}]}), 400)
    assert_error(post(server, "/v1/completions", {"model": NAME, "prompt": "hi", "max_tokens": MAX_LEN + 1}), 400)
    assert_alive(client)


def test_oversized_body(server, client):
    port = int(server["base"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 900000000\r\n\r\n{\"prompt\":")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.split(b" ")[1] == b"413", data[:200]
    assert_alive(client)


def test_client_disconnect_mid_stream(server, client):
    aborted0 = metric(requests.get(server["base"] + "/metrics").text, "vllm:request_success_total",
                      model_name=NAME, finished_reason="abort")
    r = requests.post(server["base"] + "/v1/completions", stream=True, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": NAME, "prompt": "Write a very long story:", "max_tokens": 1000,
                            "stream": True, "ignore_eos": True})
    lines = r.iter_lines()
    got = 0
    for line in lines:
        if line.startswith(b"data: {"):
            got += 1
            if got == 2:
                break
    r.close()  # hang up mid-stream
    base = server["base"]
    # 1000 tokens take longer than noticing the hang-up, so the
    # request leaves only by the abort; the window is wide for a loaded CI box.
    deadline = time.time() + 60
    while time.time() < deadline:
        m = requests.get(base + "/metrics").text
        # the engine frees the request at its next step, the server counts the
        # abort when its connection thread notices: either may come first
        if metric(m, "vllm:num_requests_running", model_name=NAME) == 0 and \
                metric(m, "vllm:num_requests_waiting", model_name=NAME) == 0 and \
                metric(m, "vllm:kv_cache_usage_perc", model_name=NAME) == 0 and \
                metric(m, "vllm:request_success_total", model_name=NAME, finished_reason="abort") > aborted0:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the aborted request is still running")
    aborted = metric(m, "vllm:request_success_total", model_name=NAME, finished_reason="abort")
    assert_alive(client)
    # a non-streaming client that hangs up is noticed too
    port = int(base.rsplit(":", 1)[1])
    body = json.dumps({"model": NAME, "prompt": "Write a very long story:", "max_tokens": 500,
                       "ignore_eos": True}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " +
                  str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.5)
    deadline = time.time() + 30
    while time.time() < deadline:
        m = requests.get(base + "/metrics").text
        if metric(m, "vllm:request_success_total", model_name=NAME, finished_reason="abort") > aborted and \
                metric(m, "vllm:num_requests_running", model_name=NAME) == 0:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the abandoned non-streaming request is still running")
    assert_alive(client)


def test_concurrent_requests(client):
    results = [None] * 4
    def run(i):
        results[i] = client.completions.create(model=NAME, prompt=f"Number {i}:", max_tokens=4, temperature=0,
                                               extra_body={"ignore_eos": True})
    ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert all(r is not None and r.usage.completion_tokens == 4 for r in results)


def test_cli_errors():
    def run(*args, env=None):
        e = dict(os.environ, **(env or {}))
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=30, env=e)
    h = run("--model", MODEL, "--help")
    assert h.returncode == 0 and "--host" in h.stdout and "127.0.0.1" in h.stdout
    v = run("--version")
    assert v.returncode == 0 and "vllm-metal" in v.stdout
    for args, env, word in [(["--model", MODEL, "--port", "abc"], None, "--port"),
                            (["--model", MODEL, "--block-size", "7"], None, "--block-size"),
                            (["--model", MODEL, "--gpu-memory-utilization", "2"], None, "--gpu-memory-utilization"),
                            (["--model", MODEL, "--dtype", "int3"], None, "--dtype"),
                            (["--model", MODEL, "--bogus"], None, "--bogus"),
                            (["serve", MODEL], {"VLLM_METAL_BLOCK_SIZE": "12"}, "VLLM_METAL_BLOCK_SIZE"),
                            (["serve", MODEL], {"VLLM_MLX_DEVICE": "tpu"}, "VLLM_MLX_DEVICE"),
                            (["serve", MODEL], {"VLLM_METAL_MEMORY_FRACTION": "x"}, "VLLM_METAL_MEMORY_FRACTION"),
                            (["serve", MODEL], {"VLLM_METAL_USE_MLX": "maybe"}, "VLLM_METAL_USE_MLX")]:
        r = run(*args, env=env)
        assert r.returncode != 0 and word in r.stderr, (args, env, r.stderr)
