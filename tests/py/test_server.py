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

openai = pytest.importorskip("openai")

BIN = os.environ.get("VLLM_METAL_BIN", os.path.join(os.path.dirname(__file__), "../../build/vllm-metal"))
MODEL = os.environ.get("VLLM_METAL_TEST_MODEL",
                       os.path.expanduser("~/.cache/vllm-metal/SmolLM2-135M-Instruct.Q4_1.gguf"))
NAME = "smol"
KEY = "test-key-123"
MAX_LEN = 1024

pytestmark = pytest.mark.skipif(not (os.path.exists(BIN) and os.path.exists(MODEL)),
                                reason="needs the built binary and the test model")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    env = dict(os.environ, VLLM_METAL_DEBUG="0")
    env.pop("VLLM_API_KEY", None)
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"vllm-metal-server-{port}.log"), "w+")
    proc = subprocess.Popen([BIN, "--model", MODEL, "--port", str(port), "--served-model-name", NAME, "smol-alias",
                             "--api-key", KEY, "--max-model-len", str(MAX_LEN),
                             "--num-gpu-blocks-override", "512", "--max-num-seqs", "16"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    saw_503 = False
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, "server exited: " + open(log.name).read()
        try:
            r = requests.get(base + "/health", timeout=2)
            if r.status_code == 200:
                break
            saw_503 |= r.status_code == 503
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("server did not become healthy: " + open(log.name).read())
    yield {"base": base, "proc": proc, "log": log.name, "saw_503": saw_503}
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("server did not stop on SIGTERM")
    log.close()


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
    assert server["saw_503"] or True  # the model may load before the first poll
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


@pytest.mark.parametrize("body", [
    {"prompt": "x", "max_tokens": "ten"},
    {"prompt": "x", "temperature": "hot"},
    {"prompt": "x", "temperature": -0.5},
    {"prompt": "x", "top_p": 0},
    {"prompt": "x", "top_p": 1.5},
    {"prompt": "x", "top_k": -5},
    {"prompt": "x", "n": 0},
    {"prompt": "x", "max_tokens": 0},
    {"prompt": "x", "logprobs": 100},
    {"prompt": "x", "stop": 3},
    {"prompt": "x", "stream": "yes"},
    {"prompt": "x", "stop_token_ids": ["a"]},
    {"prompt": "x", "min_p": 2},
    {"prompt": "x", "repetition_penalty": 0},
    {"prompt": "x", "presence_penalty": 5},
    {"prompt": 5},
    {"prompt": []},
    {"prompt": [10 ** 8]},
    {"max_tokens": 3},
    {"prompt": "x", "stream_options": {"include_usage": True}},
])
def test_completion_errors(server, body):
    assert_error(post(server, "/v1/completions", dict(body, model=NAME)), 400)


@pytest.mark.parametrize("body", [
    {"messages": "hi"},
    {"messages": []},
    {"messages": [{"content": "no role"}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3},
    {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 50},
    {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1},
    {"messages": [{"role": "user", "content": "x"}], "n": "two"},
])
def test_chat_errors(server, body):
    assert_error(post(server, "/v1/chat/completions", dict(body, model=NAME)), 400)


def test_bad_json_and_routes(server, client):
    assert_error(post(server, "/v1/chat/completions", None, raw=b"{not json"), 400)
    assert_error(post(server, "/v1/completions", None, raw=b"[1, 2]"), 400)
    assert_error(post(server, "/v1/completions", None, raw=b""), 400)
    assert_error(post(server, "/v1/completions", None, raw=b"\xff\xfe\x00garbage"), 400)
    assert_error(post(server, "/v1/completions", {"model": "nope", "prompt": "x"}), 404)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    assert_error(requests.get(server["base"] + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}), 404)
    assert_error(requests.get(server["base"] + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}), 405)
    assert_error(requests.put(server["base"] + "/health"), 405)
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model=NAME, prompt="x", max_tokens=1, temperature=-1)
    assert ei.value.status_code == 400
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
        if metric(m, "vllm:num_requests_running", model_name=NAME) == 0 and \
                metric(m, "vllm:num_requests_waiting", model_name=NAME) == 0:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the aborted request is still running")
    aborted = metric(m, "vllm:request_success_total", model_name=NAME, finished_reason="abort")
    assert aborted >= 1
    assert metric(m, "vllm:kv_cache_usage_perc", model_name=NAME) == 0
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
