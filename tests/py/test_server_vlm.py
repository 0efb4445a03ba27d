"""Images through the OpenAI server: the tiny random-weight Qwen2-VL
(tests/data/tiny_vlm/qwen2_vl, tokenizer from scripts/oracles/make_tiny_vlm_tokenizer.py)
answers chat requests with image_url parts (data: URLs and http URLs from a local
HTTP server) with transformers' greedy tokens (golden.json); bad images get 400 and
the server keeps serving; the prefix cache reuses an image's blocks only for the
same image.

Env: VLLM_METAL_BIN (build/vllm-metal).
"""
import base64
import functools
import http.server
import json
import os
import socket
import struct
import subprocess
import threading
import time
import zlib

import pytest
import requests

from server_util import running_server

openai = pytest.importorskip("openai")

ROOT = os.path.join(os.path.dirname(__file__), "../..")
BIN = os.environ.get("VLLM_METAL_BIN", os.path.join(ROOT, "build/vllm-metal"))
VLM = os.path.join(ROOT, "tests/data/tiny_vlm/qwen2_vl")
IMAGES = os.path.join(ROOT, "tests/data/tiny_vlm/images")
IMAGE_TOKEN = 252

pytestmark = pytest.mark.skipif(not os.path.exists(BIN), reason="needs the built binary")

SPECIAL = {0: "<|endoftext|>", 1: "<s>", 2: "</s>", 250: "<|vision_start|>", 251: "<|vision_end|>",
           252: "<|image_pad|>", 253: "<|video_pad|>", 254: "<|im_start|>", 255: "<|im_end|>"}


def tiny_text(ids):  # as scripts/oracles/make_tiny_vlm_tokenizer.py spells ids
    return "".join(SPECIAL.get(i) or (chr(i) if 32 <= i <= 126 else chr(0x100 + i)) for i in ids)


def golden(which):
    """(content parts with image placeholders, image file names, expected continuation ids)"""
    g = json.load(open(os.path.join(VLM, "golden.json")))["prompts"][which]
    files = {"rgb_60x90": "rgb_60x90.png", "wide_37x120": "wide_37x120.jpg", "tall_150x41": "tall_150x41.png"}
    toks, P = g["tokens"], g["prompt_len"]
    assert toks[0] == 1  # bos: the template writes it
    parts, run, i = [], [], 1
    while i < P:
        if toks[i] == 250:  # <|vision_start|><|image_pad|>*n<|vision_end|>
            if run:
                parts.append(tiny_text(run))
                run = []
            parts.append(None)
            while toks[i] != 251:
                i += 1
        else:
            run.append(toks[i])
        i += 1
    if run:
        parts.append(tiny_text(run))
    return parts, [files[n] for n in g["images"]], toks[P:]


def data_url(name, mime=None):
    data = open(os.path.join(IMAGES, name), "rb").read()
    mime = mime or ("image/png" if name.endswith(".png") else "image/jpeg")
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def content(parts, urls):
    out, k = [], 0
    for p in parts:
        if p is None:
            out.append({"type": "image_url", "image_url": {"url": urls[k]}})
            k += 1
        else:
            out.append({"type": "text", "text": p})
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path == "/redirect-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
            return
        if self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture(scope="module")
def images_http():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=IMAGES))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def server():
    with running_server(BIN, ["--model", VLM, "--served-model-name", "tiny-vlm",
                              "--num-gpu-blocks-override", "128", "--max-num-seqs", "4", "--block-size", "8",
                              "--threads", "2"], "vlm", timeout=60) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="none", max_retries=0, timeout=60)


def chat(client, parts, urls, n_tokens, **kw):
    return client.chat.completions.create(
        model="tiny-vlm", messages=[{"role": "user", "content": content(parts, urls)}],
        max_tokens=n_tokens, temperature=0, extra_body={"ignore_eos": True, "skip_special_tokens": False}, **kw)


def test_data_url_matches_transformers(client):
    parts, files, expect = golden(0)
    r = chat(client, parts, [data_url(f) for f in files], len(expect))
    assert r.choices[0].message.content == tiny_text(expect)
    assert r.usage.prompt_tokens == 16  # 6 image tokens for a 4x6 patch grid


def test_http_urls_two_images_match_transformers(client, images_http):
    parts, files, expect = golden(1)
    r = chat(client, parts, [images_http + "/" + files[0], data_url(files[1])], len(expect))
    assert r.choices[0].message.content == tiny_text(expect)
    # streaming, both over http
    s = chat(client, parts, [images_http + "/" + f for f in files], len(expect), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in s if c.choices) == tiny_text(expect)


def test_prefix_cache_keys_on_image(client):
    parts, files, expect = golden(0)
    a = chat(client, parts, [data_url(files[0])], len(expect))
    b = chat(client, parts, [data_url(files[0])], len(expect))
    assert b.choices[0].message.content == a.choices[0].message.content == tiny_text(expect)
    assert b.usage.prompt_tokens_details.cached_tokens > 0
    # same 4x6 grid, so the same token ids: only the image hash tells them apart
    c = chat(client, parts, [data_url("gray_56x84.png")], len(expect))
    assert c.usage.prompt_tokens == a.usage.prompt_tokens
    assert c.usage.prompt_tokens_details.cached_tokens == 0


def _png_header(w, h):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("url,words", [
    ("data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode(), "PNG"),
    ("data:image/png;base64,!!!notbase64", "base64"),
    ("data:text/plain;base64,aGVsbG8=", "media type"),
    ("data:image/png;base64," + base64.b64encode(b"GIF89a" + bytes(100)).decode(), "format"),
    ("data:image/png;base64," + base64.b64encode(_png_header(10000, 10000)).decode(), "limit"),
    ("http://127.0.0.1:1/nothing.png", "cannot fetch"),
    ("ftp://127.0.0.1/x.png", "unsupported image URL"),
    ("/etc/passwd", "unsupported image URL"),
])
def test_bad_images_400_and_server_keeps_serving(server, client, url, words):
    parts, files, expect = golden(0)
    body = {"model": "tiny-vlm", "max_tokens": 2,
            "messages": [{"role": "user", "content": content(parts, [url])}]}
    r = requests.post(server["base"] + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]["message"]
    assert words.lower() in msg.lower(), msg
    ok = chat(client, parts, [data_url(files[0])], len(expect))
    assert ok.choices[0].message.content == tiny_text(expect)


def test_bad_http_images(server, images_http):
    parts, _, _ = golden(0)
    for path, words in (("/missing.png", "404"), ("/redirect-file", "cannot fetch"), ("/loop", "cannot fetch")):
        body = {"model": "tiny-vlm", "max_tokens": 2,
                "messages": [{"role": "user", "content": content(parts, [images_http + path])}]}
        r = requests.post(server["base"] + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400, r.text
        assert words in r.json()["error"]["message"], r.json()
    # placeholders and images disagree: the message has no image part but... an image part without a url
    body = {"model": "tiny-vlm", "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    r = requests.post(server["base"] + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and "image part" in r.json()["error"]["message"]
    assert server["proc"].poll() is None
