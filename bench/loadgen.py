"""loadgen.py - concurrent streaming load on an OpenAI /v1/completions server
(the measurement `vllm bench serve` makes), for bench/bench.py.

run_level(url, model, prompts, concurrency, max_tokens, extra) sends every
prompt with stream=true, at most `concurrency` in flight, and returns:
  output_tps   total output tokens / wall time of the whole level
  ttft_p50/p99 seconds from sending a request to its first text chunk
  itl_p50/p99  seconds between successive text chunks of a stream
  tokens       output tokens received (usage when the server sends it, else
               one per text chunk), requests, errors
"""
import asyncio
import json
import time

import aiohttp


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def one_request(session, url, body, result):
    t_send = time.perf_counter()
    chunk_times = []
    usage_tokens = None
    finish = None
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            result["errors"].append(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            return
        buf = b""
        async for data in resp.content.iter_any():
            now = time.perf_counter()
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        continue
                    msg = json.loads(payload)
                    if msg.get("usage"):
                        usage_tokens = msg["usage"].get("completion_tokens")
                    for ch in msg.get("choices") or []:
                        if ch.get("text"):
                            chunk_times.append(now)
                        if ch.get("finish_reason"):
                            finish = ch["finish_reason"]
    if not chunk_times:
        result["errors"].append("no text received")
        return
    result["ttft"].append(chunk_times[0] - t_send)
    result["itl"].extend(b - a for a, b in zip(chunk_times, chunk_times[1:]))
    result["tokens"] += usage_tokens if usage_tokens else len(chunk_times)
    result["finish"][finish] = result["finish"].get(finish, 0) + 1


async def run_level_async(url, model, prompts, concurrency, max_tokens, extra):
    result = {"ttft": [], "itl": [], "tokens": 0, "errors": [], "finish": {}}
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=3600)
    conn = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
        async def task(p):
            async with sem:
                body = {"model": model, "prompt": p, "max_tokens": max_tokens, "temperature": 0.0,
                        "stream": True, **extra}
                try:
                    await one_request(session, url + "/v1/completions", body, result)
                except Exception as ex:  # noqa: BLE001 - a failed request is a result
                    result["errors"].append(repr(ex)[:200])
        t0 = time.perf_counter()
        await asyncio.gather(*(task(p) for p in prompts))
        wall = time.perf_counter() - t0
    return {
        "output_tps": result["tokens"] / wall,
        "ttft_p50": percentile(result["ttft"], 50), "ttft_p99": percentile(result["ttft"], 99),
        "itl_p50": percentile(result["itl"], 50), "itl_p99": percentile(result["itl"], 99),
        "tokens": result["tokens"], "requests": len(prompts), "wall": wall,
        "errors": result["errors"][:3], "n_errors": len(result["errors"]), "finish": result["finish"],
    }


def run_level(url, model, prompts, concurrency, max_tokens, extra):
    return asyncio.run(run_level_async(url, model, prompts, concurrency, max_tokens, extra))


async def wait_ready_async(url, proc, timeout_s, path):
    t_end = time.perf_counter() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        while time.perf_counter() < t_end:
            if proc.poll() is not None:
                return False
            try:
                async with s.get(url + path) as r:
                    if r.status == 200:
                        return True
            except Exception:  # noqa: BLE001 - not up yet
                pass
            await asyncio.sleep(0.25)
    return False


def wait_ready(url, proc, timeout_s=120, path="/health"):
    return asyncio.run(wait_ready_async(url, proc, timeout_s, path))
