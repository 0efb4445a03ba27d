#!/usr/bin/env python3
"""bench.py - `make bench`: vllm-metal side by side with its peers, one run, one
machine, one model file, one thread count; prints ONE table and appends it
(with date, CPU model and noise notes) to bench/RESULTS.md.

Peers (installed from PyPI by bench/setup_bench_venv.sh, never committed):
  llama.cpp   llama-cpp-python 0.3.36 (built with GGML_NATIVE) for batch 1;
              llama-server built from the same package's vendored llama.cpp
              (bench/build_llama_server.sh) with 32 parallel slots, and the
              package's own `python -m llama_cpp.server` (one request at a
              time: it serialises requests behind a lock, no parallel slots)
  mlx-lm      mlx[cpu] + mlx-lm on the default model converted to MLX 4-bit
              (bench/make_mlx_model.py), against vllm-metal on the same files

Protocol. Batch 1: the prompt (512 token ids) in one forward pass -> prefill
tokens/s; then 128 greedy decode steps -> decode tokens/s; each measurement a
fresh process. Servers: /v1/completions, stream, temperature 0, EOS ignored,
~128-token prompts (different per request), 64 output tokens, at 1, 8 and 32
concurrent streams; total output tokens/s, TTFT and inter-token latency
(gaps between streamed chunks) p50/p99. The machine is shared, so every
measurement is repeated in rounds with the order of the systems rotated
(A B C, B C A, ...), and cells are medians with the min-max spread.
Roofline: bench/membw.c's best read bandwidth over a buffer the size of the
bytes one decode step reads (weights + the f16 KV cache at the average
context), divided by those bytes.

  ~/.cache/vllm-metal/venv-bench/bin/python bench/bench.py --bin B/vllm-metal \
      --membw B/bench/membw [--threads T] [--reps 3] [--server-reps 2] [--quick]
"""
import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import loadgen  # noqa: E402

CACHE = os.environ.get("VLLM_METAL_CACHE", os.path.expanduser("~/.cache/vllm-metal"))
LOGDIR = os.environ.get("BENCH_LOGDIR", "/tmp/vllm-metal-bench")
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there been one all we their has would when if so no will "
         "what can more out up other into only time some could them these two may then do first any "
         "my now such like our over man me even most made after also did many before must through back "
         "years where much your way well down should because each just those people how too little state "
         "good very make world still own see men work long get here between both life being under never "
         "day same another know while last might us great old year off come since against go came right "
         "used take three river mountain garden engine window letter music city water story paper").split()


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def prompt_ids(n, seed=1):
    # deterministic ids across the ordinary vocabulary (the same for every system)
    return [100 + (i * 7919 + seed * 104729) % 40000 for i in range(n)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- batch 1

def ours_batch1(a, model, ids, decode):
    out = subprocess.run([a.bin, "generate", "--model", model, "--prompt-ids", ",".join(map(str, ids)),
                          "--max-tokens", str(decode + 1), "--threads", str(a.threads)],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"vllm-metal generate failed: {out.stderr[-500:]}")
    m = re.search(r"prompt (\d+) tokens ([\d.]+) s \(([\d.]+) tok/s\).*decode ([\d.]+) ms/token", out.stdout)
    toks = [int(x) for x in out.stdout.split("tokens:")[1].split("\n")[0].split(",")[:16]]
    return {"prefill_tps": float(m.group(3)), "decode_tps": 1000.0 / float(m.group(4)), "tokens": toks}


def peer_batch1(a, peer, model, ids, decode):
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads),
               MKL_NUM_THREADS=str(a.threads))
    out = subprocess.run([sys.executable, os.path.join(HERE, "peer_batch1.py"), peer, "--model", model,
                          "--threads", str(a.threads), "--prompt-ids", ",".join(map(str, ids)),
                          "--decode", str(decode)], capture_output=True, text=True, timeout=3600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{peer} failed: {out.stderr[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# Read bandwidth over a buffer of `mib` MiB, cycled through as a decode step
# cycles through its weights and cache. The roofline uses a buffer the size
# of the bytes a step reads: where a large L3 holds part of that working set
# (seen: a 2-core Xeon VM reading 105 MiB at 38-48 GB/s and 256 MiB at 30-32),
# a larger buffer would understate the ceiling. The 256 MiB pass is kept for
# reference (main memory).
def membw(a, mib, big_mib=256):
    r = {}
    for key, size in (("", mib), ("big_", big_mib)):
        out = subprocess.run([a.membw, "--threads", str(a.threads), "--reps", "10", "--mib", str(size)],
                             capture_output=True, text=True, timeout=600)
        m = re.search(r"best ([\d.]+) median ([\d.]+)", out.stdout)
        r[key + "best"], r[key + "median"] = float(m.group(1)), float(m.group(2))
    return r


# ---------------------------------------------------------------- servers

def server_prompts(n, seed):
    rng = random.Random(seed)
    # ~100 words: about 128 tokens with SmolLM2's vocabulary; a different
    # opening per request, so no server gets a prefix-cache head start.
    return [f"Note {seed}-{i}: " + " ".join(rng.choice(WORDS) for _ in range(100)) for i in range(n)]


class Server:
    def __init__(self, name, cmd, health, extra, env=None):
        self.name, self.cmd, self.health, self.extra, self.env = name, cmd, health, extra, env
        self.proc = None

    def start(self, port, logf):
        cmd = [c.replace("{port}", str(port)) for c in self.cmd]
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        if not loadgen.wait_ready(self.url, self.proc, timeout_s=300, path=self.health):
            self.stop()
            raise RuntimeError(f"{self.name} did not come up (see {logf.name})")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)   # its own session: only what we started
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def make_servers(a):
    t = str(a.threads)
    ctx_per_slot = 512
    servers = {
        "vllm-metal": Server("vllm-metal", [a.bin, "--model", a.model, "--port", "{port}", "--threads", t,
                                            "--max-model-len", "2048", "--num-gpu-blocks-override", "1024"],
                             "/health", {"ignore_eos": True, "stream_options": {"include_usage": True}}),
    }
    if a.llama_server:
        servers["llama-server"] = Server(
            "llama-server", [a.llama_server, "-m", a.model, "--host", "127.0.0.1", "--port", "{port}",
                             "-t", t, "-tb", t, "-np", "32", "-c", str(32 * ctx_per_slot), "-b", "512",
                             "-ub", "512", "--no-webui"],
            "/health", {"ignore_eos": True, "stream_options": {"include_usage": True}})
    if not a.no_llama_cpp_python_server:
        servers["llama-cpp-python"] = Server(
            "llama-cpp-python", [sys.executable, "-m", "llama_cpp.server", "--model", a.model, "--host",
                                 "127.0.0.1", "--port", "{port}", "--n_threads", t, "--n_threads_batch", t,
                                 "--n_ctx", "2048", "--n_batch", "512",
                                 "--interrupt_requests", "False"],  # default True: a new request kills the stream
            "/v1/models", {"logit_bias": {"0": -100, "1": -100, "2": -100}})  # no ignore_eos there
    return servers


def run_server(a, srv, levels, rnd):
    if srv.name == "llama-cpp-python":
        levels = [c for c in levels if c in {int(x) for x in a.serial_levels.split(",")}]
    logf = open(os.path.join(LOGDIR, f"{srv.name}-{rnd}.log"), "w")
    port = free_port()
    srv.start(port, logf)
    res = {}
    try:
        loadgen.run_level(srv.url, a.model, server_prompts(1, 999), 1, 8, srv.extra)  # warm-up
        for c in levels:
            n = max(c, a.min_requests)
            r = loadgen.run_level(srv.url, a.model, server_prompts(n, 1000 * c + rnd), c, a.output_len, srv.extra)
            log(f"  {srv.name} c={c}: {r['output_tps']:.1f} tok/s, TTFT p50 {r['ttft_p50']*1e3:.0f} ms, "
                f"ITL p50 {r['itl_p50']*1e3:.1f} ms, {r['tokens']} tokens, {r['n_errors']} errors {r['errors']}"
                f" finish {r['finish']}")
            res[c] = r
    finally:
        srv.stop()
        logf.close()
    return res


# ---------------------------------------------------------------- table

def cell(xs, fmt="{:.1f}"):
    xs = [x for x in xs if x == x]
    if not xs:
        return "n/a", float("nan")
    med = statistics.median(xs)
    if len(xs) == 1:
        return fmt.format(med), med
    return f"{fmt.format(med)} ({fmt.format(min(xs))}–{fmt.format(max(xs))})", med


def spread(xs):
    xs = [x for x in xs if x == x and x > 0]
    return (max(xs) - min(xs)) / statistics.median(xs) * 100 if len(xs) > 1 else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--membw", required=True)
    ap.add_argument("--model", default=os.path.join(CACHE, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--mlx-dir", default=os.path.join(CACHE, "SmolLM2-135M-Instruct-mlx-4bit"))
    ap.add_argument("--llama-server", default=os.path.join(CACHE, "llama-server-0.3.36", "bin", "llama-server"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--mlx-prompt-len", type=int, default=64,
                    help="mlx-lm's CPU backend runs ~2 tok/s here; a 512-token prompt would take minutes")
    ap.add_argument("--mlx-decode", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3, help="rounds of the batch-1 measurements")
    ap.add_argument("--mlx-reps", type=int, default=2)
    ap.add_argument("--server-reps", type=int, default=2, help="rounds of the server measurements")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--min-requests", type=int, default=4, help="requests per level: max(concurrency, this)")
    ap.add_argument("--no-llama-cpp-python-server", action="store_true")
    ap.add_argument("--serial-levels", default="1,8",
                    help="levels for python -m llama_cpp.server, which serves one request at a time "
                         "(at 32 streams it would only queue: minutes for a known answer)")
    ap.add_argument("--no-mlx", action="store_true")
    ap.add_argument("--no-servers", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 round each, for trying the harness")
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    a = ap.parse_args()
    if a.quick:
        a.reps = a.mlx_reps = a.server_reps = 1
    if not os.path.isdir(a.mlx_dir):
        a.no_mlx = True
    os.makedirs(LOGDIR, exist_ok=True)
    levels = [int(x) for x in a.levels.split(",")]
    t_start = time.time()
    load_samples = [loadavg()]

    # weight bytes a decode step reads: every tensor once (the tied embedding
    # is the LM head, read whole; its row lookup is noise)
    import gguf
    rd = gguf.GGUFReader(a.model)
    weight_bytes = sum(int(t.n_bytes) for t in rd.tensors)
    f = {k: int(rd.fields[k].contents()) for k in
         ("llama.block_count", "llama.attention.head_count_kv", "llama.embedding_length", "llama.attention.head_count")}
    head_dim = f["llama.embedding_length"] // f["llama.attention.head_count"]
    kv_per_token = f["llama.block_count"] * 2 * f["llama.attention.head_count_kv"] * head_dim * 2  # f16 K+V
    avg_ctx = a.prompt_len + a.decode / 2
    bytes_per_token = weight_bytes + kv_per_token * avg_ctx
    ws_mib = -(-int(bytes_per_token) // (1 << 20))   # the decode's working set, rounded up
    del rd

    ids = prompt_ids(a.prompt_len)
    mlx_ids = prompt_ids(a.mlx_prompt_len)
    R = {k: [] for k in ("bw", "ours", "llama", "ours_mlx", "mlx")}
    first_tokens = {}
    # batch-1 rounds, order rotated every round
    for rnd in range(a.reps):
        jobs = [("bw", lambda: membw(a, ws_mib)),
                ("ours", lambda: ours_batch1(a, a.model, ids, a.decode)),
                ("llama", lambda: peer_batch1(a, "llamacpp", a.model, ids, a.decode))]
        if not a.no_mlx and rnd < a.mlx_reps:
            jobs += [("ours_mlx", lambda: ours_batch1(a, a.mlx_dir, mlx_ids, a.mlx_decode)),
                     ("mlx", lambda: peer_batch1(a, "mlx", a.mlx_dir, mlx_ids, a.mlx_decode))]
        k = rnd % len(jobs)
        for name, fn in jobs[k:] + jobs[:k]:
            r = fn()
            R[name].append(r)
            if "tokens" in r:
                first_tokens.setdefault(name, r["tokens"])
            log(f"round {rnd} {name}: " + ", ".join(f"{k2} {v:.2f}" for k2, v in r.items() if isinstance(v, float)))
            load_samples.append(loadavg())

    # server rounds: start, warm up, 1/8/32 streams, stop; order rotated
    S = {}
    if not a.no_servers:
        if a.llama_server and not os.access(a.llama_server, os.X_OK):  # checked late: may still be building
            log(f"bench: no llama-server at {a.llama_server} (bench/build_llama_server.sh builds it); skipped")
            a.llama_server = None
        servers = make_servers(a)
        names = list(servers)
        for rnd in range(a.server_reps):
            k = rnd % len(names)
            for name in names[k:] + names[:k]:
                log(f"server round {rnd}: {name}")
                try:
                    res = run_server(a, servers[name], levels, rnd)
                except Exception as ex:  # noqa: BLE001 - report, go on with the others
                    log(f"  {name} failed: {ex}")
                    continue
                for c, r in res.items():
                    S.setdefault((name, c), []).append(r)
                load_samples.append(loadavg())

    # ------------------------------------------------------------ the table
    bw_best = max(r["best"] for r in R["bw"])
    roof = bw_best * 1e9 / bytes_per_token
    rows = []

    def row(metric, ours_xs, peer_xs, peer, fmt="{:.1f}", higher=True):
        o, om = cell(ours_xs, fmt)
        p, pm = cell(peer_xs, fmt)
        ratio = (om / pm if higher else pm / om) if pm == pm and om == om and pm and om else float("nan")
        rows.append((metric, o, p, f"{ratio:.2f}×" if ratio == ratio else "n/a", peer))

    bw_cell, _ = cell([r["best"] for r in R["bw"]], "{:.2f}")
    rows.append((f"memory read bandwidth, {a.threads} threads, {ws_mib} MiB (GB/s, best of 10 passes per round)",
                 bw_cell, "", "", f"bench/membw.c over the decode's working set (median pass "
                 f"{statistics.median(r['median'] for r in R['bw']):.2f}; over 256 MiB: best "
                 f"{max(r['big_best'] for r in R['bw']):.2f}, median {statistics.median(r['big_median'] for r in R['bw']):.2f})"))
    rows.append((f"decode roofline (tok/s) = {bw_best:.2f} GB/s ÷ {bytes_per_token/1e6:.1f} MB/token",
                 f"{roof:.0f}", "", "",
                 f"weights {weight_bytes/1e6:.1f} MB + f16 KV {kv_per_token*avg_ctx/1e6:.1f} MB at avg ctx {avg_ctx:.0f}"))
    llama_ver = R["llama"][0].get("version", "llama-cpp-python") if R["llama"] else "llama-cpp-python"
    row(f"prefill tok/s, {a.prompt_len}-token prompt, batch 1", [r["prefill_tps"] for r in R["ours"]],
        [r["prefill_tps"] for r in R["llama"]], f"llama.cpp via {llama_ver}")
    row(f"decode tok/s, {a.decode} tokens, batch 1", [r["decode_tps"] for r in R["ours"]],
        [r["decode_tps"] for r in R["llama"]], f"llama.cpp via {llama_ver}")
    row("decode, % of roofline", [100 * r["decode_tps"] / roof for r in R["ours"]],
        [100 * r["decode_tps"] / roof for r in R["llama"]], f"llama.cpp via {llama_ver}", "{:.0f}%")
    server_names = {"llama-server": "llama-server (32 slots, cont. batching; llama.cpp of llama-cpp-python 0.3.36)",
                    "llama-cpp-python": "python -m llama_cpp.server (serial: one request at a time)"}
    for c in levels:
        n = max(c, a.min_requests)
        if S.get(("vllm-metal", c)) and not S.get(("llama-server", c)) and not S.get(("llama-cpp-python", c)):
            row(f"server c={c} ({n} req × {a.output_len} out): output tok/s",
                [r["output_tps"] for r in S[("vllm-metal", c)]], [], "no peer ran at this level")
        for peer in ("llama-server", "llama-cpp-python"):
            ours = S.get(("vllm-metal", c), [])
            theirs = S.get((peer, c), [])
            if not theirs and not ours:
                continue
            if not theirs:
                continue
            pn = server_names[peer]
            row(f"server c={c} ({n} req × {a.output_len} out): output tok/s", [r["output_tps"] for r in ours],
                [r["output_tps"] for r in theirs], pn)
            row(f"server c={c}: TTFT p50 (ms)", [r["ttft_p50"] * 1e3 for r in ours],
                [r["ttft_p50"] * 1e3 for r in theirs], pn, "{:.0f}", higher=False)
            row(f"server c={c}: TTFT p99 (ms)", [r["ttft_p99"] * 1e3 for r in ours],
                [r["ttft_p99"] * 1e3 for r in theirs], pn, "{:.0f}", higher=False)
            row(f"server c={c}: ITL p50 (ms)", [r["itl_p50"] * 1e3 for r in ours],
                [r["itl_p50"] * 1e3 for r in theirs], pn, "{:.1f}", higher=False)
            row(f"server c={c}: ITL p99 (ms)", [r["itl_p99"] * 1e3 for r in ours],
                [r["itl_p99"] * 1e3 for r in theirs], pn, "{:.1f}", higher=False)
    if R["mlx"]:
        mver = R["mlx"][0].get("version", "mlx-lm")
        row(f"MLX 4-bit model: prefill tok/s, {a.mlx_prompt_len}-token prompt", [r["prefill_tps"] for r in R["ours_mlx"]],
            [r["prefill_tps"] for r in R["mlx"]], mver)
        row(f"MLX 4-bit model: decode tok/s, {a.mlx_decode} tokens", [r["decode_tps"] for r in R["ours_mlx"]],
            [r["decode_tps"] for r in R["mlx"]], mver)

    load_samples.append(loadavg())
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"### {date} — {cpu_model()}, {os.cpu_count()} cores, threads {a.threads}, "
            f"{os.path.basename(a.model)}")
    lines = [head, "",
             "| metric | vllm-metal | peer | ours vs peer | peer is |",
             "|---|---|---|---|---|"]
    lines += [f"| {m} | {o} | {p} | {r} | {n} |" for m, o, p, r, n in rows]
    spreads = [spread([r["decode_tps"] for r in R[k]]) for k in ("ours", "llama") if len(R[k]) > 1]
    spreads += [spread([r["output_tps"] for r in v]) for v in S.values() if len(v) > 1]
    agree = ""
    if "ours" in first_tokens and "llama" in first_tokens:
        o, l_ = first_tokens["ours"], first_tokens["llama"]
        agree += f"greedy ids agree with llama.cpp on {sum(x == y for x, y in zip(o, l_))}/{len(o)} of the first tokens; "
    if "ours_mlx" in first_tokens and "mlx" in first_tokens:
        o, m_ = first_tokens["ours_mlx"], first_tokens["mlx"]
        agree += f"with mlx-lm on {sum(x == y for x, y in zip(o, m_))}/{len(o)}; "
    lines += ["",
              f"Cells: median (min–max) over {a.reps} batch-1 rounds ({a.mlx_reps} for MLX) and {a.server_reps} "
              f"server rounds, systems in rotated order each round. 'ours vs peer' > 1 means vllm-metal is better "
              f"(speed: ours/peer; latency: peer/ours). Load average (1 min) during the run: "
              f"{min(load_samples):.1f}–{max(load_samples):.1f}; "
              f"median spread (max−min)/median of the repeated cells: "
              f"{statistics.median(spreads) if spreads else 0:.0f}%. {agree}"
              f"Wall time {time.time() - t_start:.0f} s.", ""]
    table = "\n".join(lines)
    print(table)
    if a.results:
        with open(a.results, "a") as fh:
            fh.write("\n" + table)
        log(f"bench: appended to {a.results}")


if __name__ == "__main__":
    main()
