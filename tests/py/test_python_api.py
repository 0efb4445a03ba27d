"""The Python package (python/vllm_metal, ctypes over libvllm_metal.so) and the C API.

(a) the seed's example - MinimalConfig + MetalModelRunner + load_model + generate -
    runs unchanged but for the model name (the real default GGUF), and greedy
    text equals the engine's tokens, which equal the `vllm-metal generate` CLI's
    (single-sequence session, no batching) token for token.
(b) errors come back as Python exceptions with the library's message.
"""
import os
import re
import subprocess
import sys
import threading
import types

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "python"))
os.environ.setdefault("VLLM_METAL_LIB", os.path.join(ROOT, "build", "libvllm_metal.so"))
CACHE = os.environ.get("VLLM_METAL_CACHE", os.path.expanduser("~/.cache/vllm-metal"))
MODEL = os.environ.get("VLLM_METAL_TEST_MODEL", os.path.join(CACHE, "SmolLM2-135M-Instruct.Q4_1.gguf"))
BIN = os.environ.get("VLLM_METAL_BIN", os.path.join(ROOT, "build", "vllm-metal"))

pytestmark = pytest.mark.skipif(not os.path.exists(MODEL), reason=f"no model at {MODEL}")

from vllm_metal.model_runner import MetalModelRunner  # noqa: E402
from vllm_metal import Engine, VllmMetalError  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


# ---- the seed's example (benchmarks/bench.py's set-up), model name changed
class MinimalConfig:
    """Minimal config for MetalModelRunner."""

    class ModelConfig:
        def __init__(self, model: str):
            self.model = model
            self.trust_remote_code = True

    def __init__(self, model: str):
        self.model_config = self.ModelConfig(model)


@pytest.fixture(scope="module")
def runner():
    runner = MetalModelRunner(MinimalConfig(MODEL))
    runner.load_model()
    # Warmup
    runner.generate("Warmup", max_tokens=10)
    return runner


def cli_greedy(prompt_ids, n):
    out = subprocess.run([BIN, "generate", "--model", MODEL, "--prompt-ids", ",".join(map(str, prompt_ids)),
                          "--max-tokens", str(n)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    m = re.search(r"tokens: ([\d,]+)", out.stdout)
    assert m, out.stdout
    return [int(x) for x in m.group(1).split(",")]


def test_seed_example_generates_text(runner):
    text = runner.generate("The capital of France is", max_tokens=16)
    assert isinstance(text, str) and text.strip()
    assert runner.model is not None and runner.tokenizer is not None


@pytest.mark.skipif(not os.path.exists(BIN), reason="no vllm-metal binary")
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_engine_and_cli(runner, prompt):
    n = 20
    text = runner.generate(prompt, max_tokens=n, temperature=0.0)
    res = runner.engine.generate(prompt, max_tokens=n, temperature=0)
    assert res["text"] == text
    toks = res["token_ids"]
    assert res["prompt_token_ids"] == runner.tokenizer.encode(prompt)
    assert runner.tokenizer.decode(toks) == text
    # token-id path of the C API: same tokens
    ids_out, fr = runner.engine.generate_ids(res["prompt_token_ids"], max_tokens=n, temperature=0)
    assert ids_out == toks and fr == res["finish_reason"]
    # the CLI's single-sequence greedy decode (it does not stop at EOS)
    cli = cli_greedy(res["prompt_token_ids"], n)
    assert cli[: len(toks)] == toks
    if res["finish_reason"] == "stop":
        assert toks[-1] in runner.engine.info["eos_token_ids"]
    else:
        assert res["finish_reason"] == "length" and len(toks) == n


def test_config_shapes(runner):
    for cfg in ({"model_config": {"model": MODEL}}, {"model": MODEL}, MODEL,
                types.SimpleNamespace(model_config=types.SimpleNamespace(model=MODEL))):
        assert MetalModelRunner(cfg).model_name == MODEL
    cfg = types.SimpleNamespace(model_config=types.SimpleNamespace(model=MODEL, max_model_len=512))
    r = MetalModelRunner(cfg, num_kv_blocks=64)
    r.load_model()
    assert r.model_config["max_model_len"] == 512  # model_config.max_model_len is passed on
    assert r.generate(PROMPTS[0], max_tokens=8, temperature=0.0) == runner.generate(PROMPTS[0], max_tokens=8)
    r.engine.close()


def test_sampling_parameters(runner):
    a = runner.generate(PROMPTS[2], max_tokens=8, temperature=0.8, top_p=0.9, top_k=40, seed=7)
    b = runner.generate(PROMPTS[2], max_tokens=8, temperature=0.8, top_p=0.9, top_k=40, seed=7)
    assert a == b
    full = runner.engine.generate(PROMPTS[0], max_tokens=24, temperature=0)["text"]
    word = full.split()[1] if len(full.split()) > 1 else full.split()[0]
    cut = runner.generate(PROMPTS[0], max_tokens=24, temperature=0.0, stop=[word])
    assert cut == full[: full.index(word)]
    res = runner.engine.generate(PROMPTS[0], max_tokens=4, temperature=0, logprobs=2)
    assert len(res["logprobs"]) == len(res["token_ids"])
    assert res["logprobs"][0][0]["token_id"] == res["token_ids"][0]
    assert res["usage"]["total_tokens"] == res["usage"]["prompt_tokens"] + res["usage"]["completion_tokens"]


def test_chat_messages(runner):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = runner.tokenizer.apply_chat_template(msgs)
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    res = runner.engine.chat(msgs, max_tokens=16, temperature=0)
    assert res["prompt"] == prompt
    assert res["prompt_token_ids"] == runner.tokenizer.encode(prompt, add_special_tokens=False)
    direct = runner.engine.generate(prompt_token_ids=res["prompt_token_ids"], max_tokens=16, temperature=0)
    assert direct["token_ids"] == res["token_ids"]
    assert runner.chat(msgs, max_tokens=16) == res["text"]


def test_concurrent_callers_are_batched_and_exact(runner):
    want = {p: runner.generate(p, max_tokens=8, temperature=0.0) for p in PROMPTS}
    got, errors = {}, []

    def work(p):
        try:
            got[p] = runner.generate(p, max_tokens=8, temperature=0.0)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and got == want


def test_images_raise_for_text_models(runner):
    with pytest.raises(VllmMetalError, match="not a vision-language model"):
        runner.generate("Describe this image.", images=["cat.jpg"], max_tokens=8)


def test_images_with_a_vlm_match_transformers():
    """The tiny Qwen2-VL (tests/data/tiny_vlm/qwen2_vl): golden prompt 0 from text with a
    placeholder, the image as a path, as bytes and as a data: URL."""
    import base64
    import json
    vlm = os.path.join(ROOT, "tests/data/tiny_vlm/qwen2_vl")
    png = os.path.join(ROOT, "tests/data/tiny_vlm/images/rgb_60x90.png")
    g = json.load(open(os.path.join(vlm, "golden.json")))["prompts"][0]
    special = {1: "<s>", 250: "<|vision_start|>", 251: "<|vision_end|>", 252: "<|image_pad|>"}
    prompt, last = "", None
    for t in g["tokens"][:g["prompt_len"]]:
        if not (t == 252 and last == 252):
            prompt += special.get(t) or (chr(t) if 32 <= t <= 126 else chr(0x100 + t))
        last = t
    expect = g["tokens"][g["prompt_len"]:]
    r = MetalModelRunner(MinimalConfig(vlm), threads=2, num_kv_blocks=64)
    r.load_model()
    data = open(png, "rb").read()
    for im in (png, data, "data:image/png;base64," + base64.b64encode(data).decode()):
        out = r.engine.generate(prompt, images=[im], max_tokens=len(expect), temperature=0, ignore_eos=True)
        assert out["token_ids"] == expect
        assert out["usage"]["prompt_tokens"] == g["prompt_len"]
    # text stays text-only on a VLM; a missing file is a clear error
    assert r.generate("<s>abc", max_tokens=2)
    with pytest.raises(VllmMetalError, match="no-such.png"):
        r.generate(prompt, images=["/no-such.png"], max_tokens=2)


def test_errors_raise_with_the_library_message(runner, tmp_path):
    with pytest.raises(VllmMetalError) as ei:
        MetalModelRunner(MinimalConfig(str(tmp_path / "missing.gguf"))).load_model()
    assert "missing.gguf" in str(ei.value)
    assert isinstance(ei.value, RuntimeError)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(VllmMetalError):
        MetalModelRunner(MinimalConfig(str(bad))).load_model()
    with pytest.raises(VllmMetalError, match="temperature"):
        runner.generate("hi", temperature=-1.0)
    with pytest.raises(VllmMetalError, match="top_p"):
        runner.generate("hi", top_p=1.5)
    with pytest.raises(VllmMetalError, match="maximum model length"):
        runner.generate("hello " * 10000, max_tokens=4)
    with pytest.raises(TypeError, match="unknown sampling parameter"):
        runner.generate("hi", not_a_param=1)
    with pytest.raises(VllmMetalError, match="unknown engine argument 'bogus'"):
        Engine(MODEL, bogus=1)
    with pytest.raises(RuntimeError, match="load_model"):
        MetalModelRunner(MinimalConfig(MODEL)).generate("hi")
    with pytest.raises(ValueError):
        MetalModelRunner({"nothing": 1})
    # the engine still works after all that
    assert runner.generate(PROMPTS[0], max_tokens=4)


def test_c_api_json_errors_directly():
    import ctypes
    from vllm_metal import _lib
    lib = _lib.lib()
    assert lib.vllm_metal_engine_create(b"{not json") is None
    assert "invalid JSON" in _lib.last_error()
    assert lib.vllm_metal_engine_create(b"{}") is None
    assert "model" in _lib.last_error()
    assert lib.vllm_metal_generate(None, b"{}", None) is None
    assert lib.vllm_metal_api_version() == 1
    p = lib.vllm_metal_resolve_model(MODEL.encode())
    assert ctypes.string_at(p).decode() == MODEL
    lib.vllm_metal_free(p)
