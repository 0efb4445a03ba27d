"""Models by Hugging Face Hub name (src/hub) against a local stand-in for the Hub.

A Python http.server in a thread answers the Hub's paths, and HF_ENDPOINT points
at it:
  GET  /api/models/{org}/{name}/revision/{rev}   -> {"sha", "siblings": [{"rfilename"}]}
  HEAD /{org}/{name}/resolve/{sha}/{file}        -> 200 + ETag (small files), or
                                                    302 to /lfs/<sha256> + X-Linked-Etag/-Size (LFS)
  GET  the same, following the redirect; Range requests answered with 206.
The library is driven through the Python package (ctypes), in this process.
"""
import hashlib
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "python"))
os.environ.setdefault("VLLM_METAL_LIB", os.path.join(ROOT, "build", "libvllm_metal.so"))
import vllm_metal  # noqa: E402
from vllm_metal import Engine, VllmMetalError, resolve_model  # noqa: E402

TINY = os.path.join(ROOT, "tests", "data", "tiny")
TOKEN = "hf_test_token"


def read(path):
    with open(path, "rb") as f:
        return f.read()


def commit_sha(tag):
    return hashlib.sha1(tag.encode()).hexdigest()


class Repo:
    """One repository: revisions -> (commit, {file: bytes}); LFS = names ending in weights suffixes."""

    def __init__(self, private=False):
        self.revs = {}      # rev name -> commit sha
        self.commits = {}   # sha -> {file: bytes}
        self.private = private
        self.bad_sha = set()  # files whose X-Linked-Etag lies

    def add(self, revs, files, tag):
        sha = commit_sha(tag)
        self.commits[sha] = files
        for r in revs:
            self.revs[r] = sha
        return sha


def is_lfs(name):
    return name.endswith((".safetensors", ".gguf", ".onnx"))


class Hub:
    def __init__(self):
        self.repos = {}
        self.log = []           # (method, path, range header)
        self.cut_next = set()   # LFS sha256s whose next GET is cut half way
        self.blobs = {}         # sha256 -> bytes
        self.lock = threading.Lock()


def make_handler(hub):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _send(self, code, body=b"", headers=None, head=False):
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head and body:
                self.wfile.write(body)

        def _error(self, code, error_code, head=False):
            body = json.dumps({"error": error_code}).encode()
            self._send(code, body, {"X-Error-Code": error_code, "Content-Type": "application/json"}, head)

        def _repo(self, org, name):
            repo = hub.repos.get(f"{org}/{name}")
            if repo is None:
                return None, 404
            if repo.private and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return None, 401
            return repo, 200

        def _handle(self, head):
            with hub.lock:
                hub.log.append((self.command, self.path, self.headers.get("Range")))
            parts = self.path.split("?")[0].strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
                repo, st = self._repo(parts[2], parts[3])
                if repo is None:
                    return self._error(st, "RepoNotFound", head)
                rev = "/".join(parts[5:]).replace("%2F", "/")
                sha = repo.revs.get(rev, rev if rev in repo.commits else None)
                if sha is None:
                    return self._error(404, "RevisionNotFound", head)
                info = {"id": f"{parts[2]}/{parts[3]}", "sha": sha,
                        "siblings": [{"rfilename": f} for f in sorted(repo.commits[sha])]}
                return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
            if len(parts) >= 5 and parts[2] == "resolve":
                repo, st = self._repo(parts[0], parts[1])
                if repo is None:
                    return self._error(st, "RepoNotFound", head)
                sha = repo.revs.get(parts[3], parts[3])
                files = repo.commits.get(sha)
                if files is None:
                    return self._error(404, "RevisionNotFound", head)
                fname = "/".join(parts[4:])
                if fname not in files:
                    return self._error(404, "EntryNotFound", head)
                data = files[fname]
                if is_lfs(fname):
                    digest = hashlib.sha256(data).hexdigest()
                    hub.blobs[digest] = data
                    etag = "0" * 64 if fname in repo.bad_sha else digest
                    return self._send(302, b"", {"Location": f"/lfs/{digest}", "X-Linked-Etag": f'"{etag}"',
                                                 "X-Linked-Size": str(len(data)), "X-Repo-Commit": sha}, head)
                etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                return self._body(data, {"ETag": f'"{etag}"', "X-Repo-Commit": sha}, head)
            if parts[0] == "lfs" and len(parts) == 2 and parts[1] in hub.blobs:
                data = hub.blobs[parts[1]]
                cut = False
                if not head:
                    with hub.lock:
                        cut = parts[1] in hub.cut_next
                        hub.cut_next.discard(parts[1])
                return self._body(data, {"ETag": '"s3-etag-1"'}, head, cut=cut)
            return self._error(404, "NotFound", head)

        def _body(self, data, headers, head, cut=False):
            rng = self.headers.get("Range")
            start = 0
            code = 200
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, head)
                code = 206
                headers = dict(headers, **{"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
            body = data[start:]
            if not cut:
                return self._send(code, body, headers, head)
            # announce the whole body, send half of it, and drop the connection
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True

        def do_GET(self):
            self._handle(False)

        def do_HEAD(self):
            self._handle(True)

    return H


@pytest.fixture(scope="module")
def hub():
    h = Hub()
    qwen = {f: read(os.path.join(TINY, "qwen2", f)) for f in ("config.json", "model.safetensors")}
    qwen["README.md"] = b"# tiny qwen2\n"
    qwen["onnx/model.onnx"] = b"not wanted" * 100
    qwen["tokenizer_config.json"] = b'{"chat_template": "{{ messages[0].content }}"}'
    repo = Repo()
    repo.add(["main"], qwen, "qwen-main")
    cfg_v1 = json.loads(qwen["config.json"])
    cfg_v1["vllm_metal_test_revision"] = "v1"
    repo.add(["v1"], dict(qwen, **{"config.json": json.dumps(cfg_v1).encode()}), "qwen-v1")
    h.repos["tiny/qwen2"] = repo

    shard_dir = os.path.join(TINY, "llama_gqa_tied_sharded")
    sharded = {f: read(os.path.join(shard_dir, f)) for f in os.listdir(shard_dir) if f != "golden.json"}
    h.repos["tiny/sharded"] = Repo()
    h.repos["tiny/sharded"].add(["main"], sharded, "sharded")

    ggufs = {"m-Q4_K_M.gguf": b"GGUF" + b"a" * 3000, "m-Q8_0.gguf": b"GGUF" + b"b" * 5000,
             "m-F16.gguf": b"GGUF" + b"c" * 7000, "mmproj-m-Q4_1.gguf": b"GGUF" + b"d" * 10,
             "README.md": b"x"}
    h.repos["tiny/gguf"] = Repo()
    h.repos["tiny/gguf"].add(["main"], ggufs, "gguf")

    h.repos["tiny/private"] = Repo(private=True)
    h.repos["tiny/private"].add(["main"], {"config.json": qwen["config.json"],
                                           "model.safetensors": qwen["model.safetensors"]}, "private")
    bad = Repo()
    bad.add(["main"], {"config.json": qwen["config.json"], "model.safetensors": qwen["model.safetensors"]}, "bad")
    bad.bad_sha.add("model.safetensors")
    h.repos["tiny/badsha"] = bad

    srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(h))
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    h.endpoint = f"http://127.0.0.1:{srv.server_address[1]}"
    yield h
    srv.shutdown()


@pytest.fixture
def env(hub, tmp_path, monkeypatch):
    """A fresh HF cache pointed at the stand-in Hub."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    for k in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    with hub.lock:
        hub.log.clear()
    return tmp_path / "hf" / "hub"


def gets(hub):
    return [p for m, p, _ in hub.log if m == "GET"]


def test_fresh_download_layout_and_files(hub, env):
    path = resolve_model("tiny/qwen2")
    sha = commit_sha("qwen-main")
    repo_dir = env / "models--tiny--qwen2"
    assert path == str(repo_dir / "snapshots" / sha)
    assert (repo_dir / "refs" / "main").read_text().strip() == sha
    for f in ("config.json", "model.safetensors", "tokenizer_config.json"):
        p = os.path.join(path, f)
        assert os.path.islink(p) and os.readlink(p).startswith("../../blobs/")
        assert read(p) == hub.repos["tiny/qwen2"].commits[sha][f]
    st = read(os.path.join(TINY, "qwen2", "model.safetensors"))
    assert (repo_dir / "blobs" / hashlib.sha256(st).hexdigest()).exists()  # LFS blob named by sha256
    # only what a model needs
    assert not os.path.exists(os.path.join(path, "README.md"))
    assert not os.path.exists(os.path.join(path, "onnx"))
    assert not any("onnx" in p or "README" in p for p in gets(hub))
    assert not list((repo_dir / "blobs").glob("*.incomplete"))


def test_loads_and_generates_like_the_local_copy(hub, env):
    ids = [1, 5, 9, 3]
    with Engine(os.path.join(TINY, "qwen2"), num_kv_blocks=32, max_model_len=64) as local:
        want, _ = local.generate_ids(ids, max_tokens=6, temperature=0)
    with Engine("tiny/qwen2", num_kv_blocks=32, max_model_len=64) as eng:
        assert eng.info["model"] == "tiny/qwen2"
        assert eng.info["model_path"].endswith(commit_sha("qwen-main"))
        got, _ = eng.generate_ids(ids, max_tokens=6, temperature=0)
    assert got == want


def test_sharded_index_fetches_every_shard(hub, env):
    path = resolve_model("tiny/sharded")
    for i in range(1, 5):
        assert os.path.exists(os.path.join(path, f"model-0000{i}-of-00004.safetensors"))
    with Engine("tiny/sharded", num_kv_blocks=16, max_model_len=32) as eng:
        toks, _ = eng.generate_ids([1, 2, 3], max_tokens=3, temperature=0)
        assert len(toks) == 3


def test_resume_after_cut_connection(hub, env):
    data = read(os.path.join(TINY, "qwen2", "model.safetensors"))
    digest = hashlib.sha256(data).hexdigest()
    with hub.lock:
        hub.blobs[digest] = data
        hub.cut_next.add(digest)
    path = resolve_model("tiny/qwen2")
    assert read(os.path.join(path, "model.safetensors")) == data
    ranged = [r for m, p, r in hub.log if m == "GET" and p == f"/lfs/{digest}" and r]
    assert ranged and ranged[0] == f"bytes={len(data) // 2}-", hub.log


def test_resume_from_partial_file_of_earlier_run(hub, env):
    data = read(os.path.join(TINY, "qwen2", "model.safetensors"))
    digest = hashlib.sha256(data).hexdigest()
    blobs = env / "models--tiny--qwen2" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{digest}.incomplete").write_bytes(data[:1000])
    path = resolve_model("tiny/qwen2")
    assert read(os.path.join(path, "model.safetensors")) == data
    assert ("GET", f"/lfs/{digest}", "bytes=1000-") in hub.log


def test_revision_pinning(hub, env):
    v1 = commit_sha("qwen-v1")
    p1 = resolve_model("tiny/qwen2@v1")
    assert p1.endswith(v1)
    assert json.loads(read(os.path.join(p1, "config.json")))["vllm_metal_test_revision"] == "v1"
    assert (env / "models--tiny--qwen2" / "refs" / "v1").read_text().strip() == v1
    pm = resolve_model(f"tiny/qwen2@{commit_sha('qwen-main')}")
    assert "vllm_metal_test_revision" not in json.loads(read(os.path.join(pm, "config.json")))
    # the weights are the same blob in both snapshots: downloaded once
    st_gets = [p for p in gets(hub) if p.startswith("/lfs/")]
    assert len(st_gets) == 1
    with pytest.raises(VllmMetalError, match=r"revision 'nope' of model tiny/qwen2 not found on the Hub \(404\)"):
        resolve_model("tiny/qwen2@nope")


def test_gguf_choice_and_named_file(hub, env):
    p = resolve_model("tiny/gguf")
    assert os.path.basename(p) == "m-Q8_0.gguf"  # Q8_0 before Q4_K_M and F16; mmproj never
    assert read(p) == hub.repos["tiny/gguf"].commits[commit_sha("gguf")]["m-Q8_0.gguf"]
    assert not any("F16" in x or "mmproj" in x or "Q4_K_M" in x for x in gets(hub))
    p2 = resolve_model("tiny/gguf:m-F16.gguf")
    assert os.path.basename(p2) == "m-F16.gguf" and os.path.getsize(p2) == 7004
    with pytest.raises(VllmMetalError, match="file nothere.gguf not found in model tiny/gguf"):
        resolve_model("tiny/gguf:nothere.gguf")


def test_missing_model_is_a_clear_404(hub, env):
    with pytest.raises(VllmMetalError, match=r"model nobody/missing not found on the Hub \(404\)"):
        resolve_model("nobody/missing")
    with pytest.raises(VllmMetalError, match=r"not found on the Hub \(404\)"):
        Engine("nobody/missing")
    assert not (env / "models--nobody--missing" / "snapshots").exists()


def test_private_model_needs_token(hub, env, monkeypatch):
    with pytest.raises(VllmMetalError, match=r"tiny/private.*\(401\).*HF_TOKEN"):
        resolve_model("tiny/private")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert resolve_model("tiny/private").endswith(commit_sha("private"))


def test_sha256_mismatch_is_refused(hub, env):
    with pytest.raises(VllmMetalError, match="sha256 mismatch"):
        resolve_model("tiny/badsha")
    blobs = env / "models--tiny--badsha" / "blobs"
    assert not list(blobs.glob("*.incomplete")) and not (blobs / ("0" * 64)).exists()


def test_offline_start_from_cache(hub, env, monkeypatch):
    path = resolve_model("tiny/qwen2")
    pv1 = resolve_model("tiny/qwen2@v1")
    g = resolve_model("tiny/gguf")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with hub.lock:
        hub.log.clear()
    # cached: no network at all, with or without HF_HUB_OFFLINE
    assert resolve_model("tiny/qwen2") == path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("tiny/qwen2") == path
    assert resolve_model("tiny/qwen2@v1") == pv1
    assert resolve_model("tiny/gguf") == g
    with Engine("tiny/qwen2", num_kv_blocks=16, max_model_len=32) as eng:
        assert eng.info["model_path"] == path
    assert hub.log == []
    with pytest.raises(VllmMetalError, match="HF_HUB_OFFLINE"):
        resolve_model("tiny/sharded")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(VllmMetalError, match="cannot reach the Hub"):
        resolve_model("tiny/sharded")


def test_local_paths_and_bad_names(hub, env):
    local = os.path.join(TINY, "qwen2")
    assert resolve_model(local) == local
    with pytest.raises(VllmMetalError, match="not a Hugging Face Hub name"):
        resolve_model("/no/such/model")
    with pytest.raises(VllmMetalError, match="not a Hugging Face Hub name"):
        resolve_model("not-a-hub-name")
    assert vllm_metal.lib_version() == vllm_metal.__version__
