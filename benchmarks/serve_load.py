"""Load test of `lmforge serve`: N concurrent streaming clients vs sequential Hugging Face generation.

The script starts the server on 127.0.0.1 (a subprocess, so its memory can be read), then N clients
(asyncio + httpx) each send streaming completion requests back to back for `--seconds`: a
32-token prompt, greedy, `--max_tokens` new tokens. It reports requests/s, output tokens/s,
p50/p99 time to first token and inter-token latency, errors, and the server's RSS: before the load,
then sampled every second while it runs. A server that leaks grows for as long as the load lasts;
one that does not grows while it warms up (first batches, allocator pools) and then stays level,
so the report also gives the RSS at half time and the growth over the second half.
In-flight requests at the deadline finish and count; throughput is over the whole time taken.

The baseline is what a server without batching does: Hugging Face `GPT2LMHeadModel.generate()`
on a random-weight GPT-2 of the served model's shape, one request at a time for the same time
budget, same prompts and max_tokens (told not to stop early). It runs after the server has stopped,
so the two never share the CPU.

    python benchmarks/serve_load.py [--clients 16 --seconds 60 --max_tokens 64 --model RUN_DIR]

Without --model a random GPT of the benchmark size (6 layers x 384, 6 heads, vocab 8192, context
512, a BPE tokenizer trained on the built-in python-docs corpus) is written to a temporary run
directory. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch


def build_random_run(directory: Path, *, n_layer: int, n_head: int, n_embd: int, vocab_size: int,
                     block_size: int, seed: int) -> Path:
    from lmforge.data.sources import python_docs_corpus
    from lmforge.data.tokenizers import train_tokenizer
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.models.registry import save_model

    tok = train_tokenizer("bpe", python_docs_corpus(), vocab_size)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                          n_embd=n_embd))
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, directory)
    tok.save(directory)
    return directory


def make_prompts(run_dir: Path, count: int, length: int, seed: int) -> list[list[int]]:
    """`count` prompts of exactly `length` token ids, cut from the built-in corpus."""
    from lmforge.data.sources import python_docs_corpus
    from lmforge.data.tokenizers import Tokenizer

    tok = Tokenizer.load(run_dir)
    docs = [d for d in python_docs_corpus() if len(d) > 20 * length]
    rng = random.Random(seed)
    prompts = []
    while len(prompts) < count:
        ids = tok.encode(rng.choice(docs))
        if len(ids) > length:
            start = rng.randrange(0, len(ids) - length)
            prompts.append(list(ids[start:start + length]))
    return prompts


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler(threading.Thread):
    """Samples a process's RSS (MB) every `interval` seconds until stopped: `samples` holds (seconds, MB)."""

    def __init__(self, pid: int, interval: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self._stop_event = threading.Event()
        self._start = time.perf_counter()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.perf_counter() - self._start, rss_mb(self.pid)))
            self._stop_event.wait(self.interval)

    def stop(self) -> list[tuple[float, float]]:
        self._stop_event.set()
        self.join()
        self.samples.append((time.perf_counter() - self._start, rss_mb(self.pid)))
        return self.samples


def rss_at(samples: list[tuple[float, float]], t: float) -> float:
    """The first sample taken at or after `t` seconds."""
    return next((mb for s, mb in samples if s >= t), samples[-1][1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, port: int, clients: int, max_tokens: int, dtype: str, device: str) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "lmforge.cli", "serve", "--model", str(run_dir), "--port", str(port),
           "--model_name", "bench", "--max_slots", str(max(1, clients)), "--max_concurrent", str(2 * clients + 8),
           "--max_tokens_limit", str(max_tokens), "--request_timeout", "600", "--log_level", "warning",
           "--dtype", dtype, "--device", device]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the server did not become healthy within 180 s")


async def one_request(client, url: str, prompt: list[int], max_tokens: int) -> tuple[float, list[float], int]:
    """(time to first token, inter-token gaps, output tokens) of one streamed completion."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, last, gaps, tokens = None, None, [], 0
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if any(c.get("text") for c in chunk.get("choices", [])):
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - start
                else:
                    gaps.append(now - last)
                last = now
    return (ttft if ttft is not None else time.perf_counter() - start), gaps, tokens


async def run_clients(url: str, prompts: list[list[int]], clients: int, seconds: float, max_tokens: int) -> dict:
    import httpx

    ttfts: list[float] = []
    itls: list[float] = []
    counts = {"requests": 0, "tokens": 0, "errors": 0}
    errors: list[str] = []

    async def client_loop(i: int) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
            k = i
            while time.perf_counter() < deadline:
                try:
                    ttft, gaps, tokens = await one_request(client, url, prompts[k % len(prompts)], max_tokens)
                except Exception as e:
                    counts["errors"] += 1
                    errors.append(f"{type(e).__name__}: {e}")
                    await asyncio.sleep(0.1)
                else:
                    counts["requests"] += 1
                    counts["tokens"] += tokens
                    ttfts.append(ttft)
                    itls.extend(gaps)
                k += clients

    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:  # untimed warm-up
        await one_request(client, url, prompts[0], 2)
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    await asyncio.gather(*(client_loop(i) for i in range(clients)))
    elapsed = time.perf_counter() - start
    if errors:
        print(f"{len(errors)} errors, first: {errors[0]}", file=sys.stderr)
    return {**counts, "elapsed": elapsed, "ttfts": ttfts, "itls": itls}


def baseline_hf(run_dir: Path, prompts: list[list[int]], seconds: float, max_tokens: int, device: str,
                dtype: str) -> dict:
    """Sequential greedy generation with a random GPT-2 of the served model's shape, in the same dtype."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = json.loads((run_dir / "config.json").read_text())
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=cfg["vocab_size"], n_positions=cfg["block_size"],
                                    n_embd=cfg["n_embd"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                                    n_inner=cfg.get("intermediate_size"), activation_function="gelu_new",
                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
                                    eos_token_id=None, pad_token_id=0)).eval().to(device, getattr(torch, dtype))
    tokens, requests, k = 0, 0, 0
    with torch.inference_mode():
        warm = torch.tensor([prompts[0]], device=device)  # untimed, as the server gets a warm-up request
        hf.generate(warm, attention_mask=torch.ones_like(warm), max_new_tokens=2, do_sample=False, pad_token_id=0)
    start = time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - start < seconds:
            ids = torch.tensor([prompts[k % len(prompts)]], device=device)
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                              min_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
            tokens += out.shape[1] - ids.shape[1]
            requests += 1
            k += 1
    elapsed = time.perf_counter() - start
    return {"tokens": tokens, "requests": requests, "elapsed": elapsed}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max_tokens", type=int, default=64)
    ap.add_argument("--prompt_tokens", type=int, default=32)
    ap.add_argument("--model", default=None, help="run directory to serve (default: a random model of the "
                                                   "benchmark size)")
    ap.add_argument("--n_layer", type=int, default=6)
    ap.add_argument("--n_head", type=int, default=6)
    ap.add_argument("--n_embd", type=int, default=384)
    ap.add_argument("--vocab_size", type=int, default=8192)
    ap.add_argument("--block_size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="weights and KV cache of the server and of the baseline")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the server and the baseline run")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda requested but CUDA is not available")
    if args.clients < 1 or args.seconds <= 0 or args.max_tokens < 1:
        ap.error("--clients, --seconds and --max_tokens must be positive")

    import transformers

    with tempfile.TemporaryDirectory(prefix="serve_load-") as tmp:
        if args.model is None:
            t0 = time.perf_counter()
            run_dir = build_random_run(Path(tmp) / "model", n_layer=args.n_layer, n_head=args.n_head,
                                       n_embd=args.n_embd, vocab_size=args.vocab_size, block_size=args.block_size,
                                       seed=args.seed)
            print(f"built a random model in {run_dir} ({time.perf_counter() - t0:.1f} s)", flush=True)
        else:
            run_dir = Path(args.model)
        cfg = json.loads((run_dir / "config.json").read_text())
        prompts = make_prompts(run_dir, 64, args.prompt_tokens, args.seed)
        port = free_port()
        server = start_server(run_dir, port, args.clients, args.max_tokens, args.dtype, args.device)
        try:
            rss_start = rss_mb(server.pid)
            print(f"server pid {server.pid} on port {port}, RSS {rss_start:.0f} MB; {args.clients} clients for "
                  f"{args.seconds:g} s, {args.max_tokens} tokens per request", flush=True)
            sampler = RssSampler(server.pid)
            sampler.start()
            load = asyncio.run(run_clients(f"http://127.0.0.1:{port}/v1/completions", prompts, args.clients,
                                           args.seconds, args.max_tokens))
            samples = sampler.stop()
            rss_end = samples[-1][1]
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        base = baseline_hf(run_dir, prompts, args.seconds, args.max_tokens, args.device, args.dtype)

    rss_half = rss_at(samples, samples[-1][0] / 2)
    rss_peak = max(mb for _, mb in samples)
    ours = load["tokens"] / load["elapsed"]
    theirs = base["tokens"] / base["elapsed"]
    ttft, itl = load["ttfts"], load["itls"]
    print(f"lmforge serve: {load['requests']} requests ({load['requests'] / load['elapsed']:.2f}/s), "
          f"{ours:.1f} output tok/s, TTFT p50 {pct(ttft, 50) * 1e3:.0f} ms p99 {pct(ttft, 99) * 1e3:.0f} ms, "
          f"ITL p50 {pct(itl, 50) * 1e3:.1f} ms p99 {pct(itl, 99) * 1e3:.1f} ms, {load['errors']} errors, "
          f"RSS {rss_start:.0f} MB before, {rss_half:.0f} MB at half time, {rss_end:.0f} MB at the end "
          f"(peak {rss_peak:.0f}; {rss_end - rss_half:+.0f} MB over the second half)")
    print(f"transformers sequential: {base['requests']} requests, {theirs:.1f} output tok/s; "
          f"ratio {ours / theirs if theirs else float('nan'):.2f}")
    print(json.dumps({
        "benchmark": "serve_load", "device": args.device, "ours": round(ours, 2),
        "baseline_name": f"transformers {transformers.__version__} GPT2LMHeadModel.generate, one request at a time",
        "baseline": round(theirs, 2), "unit": "tokens/s", "ratio": round(ours / theirs, 3) if theirs else None,
        "clients": args.clients, "seconds": round(load["elapsed"], 2), "errors": load["errors"],
        "p50_ttft_ms": round(pct(ttft, 50) * 1e3, 1), "p99_ttft_ms": round(pct(ttft, 99) * 1e3, 1),
        "p50_itl_ms": round(pct(itl, 50) * 1e3, 2), "p99_itl_ms": round(pct(itl, 99) * 1e3, 2),
        "rss_start_mb": round(rss_start, 1), "rss_half_mb": round(rss_half, 1), "rss_end_mb": round(rss_end, 1),
        "rss_peak_mb": round(rss_peak, 1), "rss_second_half_growth_mb": round(rss_end - rss_half, 1),
        "rss_samples_mb": [[round(t), round(mb, 1)] for t, mb in samples[::10]],
        "requests": load["requests"], "requests_per_s": round(load["requests"] / load["elapsed"], 3),
        "output_tokens": load["tokens"], "baseline_requests": base["requests"],
        "config": {"n_layer": cfg.get("n_layer"), "n_head": cfg.get("n_head"), "n_embd": cfg.get("n_embd"),
                   "vocab_size": cfg.get("vocab_size"), "block_size": cfg.get("block_size"),
                   "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens, "greedy": True,
                   "dtype": args.dtype, "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "cpus": os.cpu_count()},
    }))


if __name__ == "__main__":
    main()
