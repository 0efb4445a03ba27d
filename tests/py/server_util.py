"""Starting and stopping a vllm-metal server for the pytest modules."""
import contextlib
import os
import socket
import subprocess
import time

import pytest
import requests


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(bin_path, args, tag, timeout=120, env=None):
    """Starts `bin_path args --port P`, waits for /health to say 200, yields
    {"base", "proc", "log"}, then stops it with SIGTERM (a server that does not
    stop fails the test)."""
    port = free_port()
    env = dict(os.environ if env is None else env)
    env.setdefault("VLLM_METAL_DEBUG", "0")
    env.pop("VLLM_API_KEY", None)
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"vllm-metal-{tag}-{port}.log"), "w+")
    proc = subprocess.Popen([bin_path, *args, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "server exited: " + open(log.name).read()
        try:
            if requests.get(base + "/health", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("server did not become healthy: " + open(log.name).read())
    try:
        yield {"base": base, "proc": proc, "log": log.name}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("server did not stop on SIGTERM")
        log.close()
