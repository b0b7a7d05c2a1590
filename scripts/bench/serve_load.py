#!/usr/bin/env python3
"""Load driver for an OpenAI-compatible server (tunelab serve, llama.cpp's llama-server).

N clients, each on its own keep-alive connection, send POST /v1/chat/completions (temperature 0,
max_tokens) until --requests requests in all have been answered. Neither server here can be told
to ignore end-of-sequence, so the default prompt asks for a long answer and the token counts are
the real ones from `usage` (streamed: the usage chunk asked for with stream_options.include_usage).
One untimed warm-up request goes first. Non-200 answers and failed connections count as errors.
Prints one JSON line: {label, clients, requests, ok, errors, wall_s, total_completion_tokens,
agg_tokens_per_s, latency_p50, latency_p90, latency_p99, ttft_p50 (streamed only), ...}.
  scripts/bench/serve_load.py --url http://127.0.0.1:8080 --clients 4 --requests 16 [--stream]
Standard library only.
"""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

DEFAULT_PROMPT = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
    "Describe every scene, every character and every conversation at length."
)


def percentile(values, q):
    """Linear-interpolated percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def r4(x):
    return None if x is None else round(x, 4)


class Client:
    """One keep-alive connection; reconnects after a failure."""

    def __init__(self, args):
        u = urllib.parse.urlsplit(args.url)
        self.https = u.scheme == "https"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if self.https else 80)
        self.base = u.path.rstrip("/")
        self.args = args
        self.conn = None
        body = {
            "messages": [{"role": "user", "content": args.prompt}],
            "temperature": 0,
            "max_tokens": args.max_tokens,
            "stream": args.stream,
        }
        if args.model:
            body["model"] = args.model
        if args.stream:
            body["stream_options"] = {"include_usage": True}
        self.body = json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json"}
        if args.api_key:
            self.headers["Authorization"] = "Bearer " + args.api_key

    def _connect(self):
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        self.conn = cls(self.host, self.port, timeout=self.args.timeout)

    def request(self):
        """One request: {ok, latency, completion_tokens, ttft, error}."""
        # A kept-alive connection the server has meanwhile closed fails before any answer; that
        # is retried once on a new connection, with the clock restarted.
        for attempt in (0, 1):
            fresh = self.conn is None
            if fresh:
                self._connect()
            start = time.perf_counter()
            try:
                self.conn.request("POST", self.base + "/v1/chat/completions", body=self.body, headers=self.headers)
                resp = self.conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self._close()
                if fresh or attempt == 1:
                    return {"ok": False, "error": f"{type(e).__name__}: {e}"}
                continue
            except Exception as e:
                self._close()
                return {"ok": False, "error": f"{type(e).__name__}: {e}"}
            break
        try:
            if resp.status != 200:
                text = resp.read().decode(errors="replace")[:300]
                return {"ok": False, "error": f"HTTP {resp.status}: {text}"}
            if self.args.stream:
                tokens, ttft = self._read_stream(resp, start)
            else:
                answer = json.loads(resp.read())
                tokens, ttft = answer.get("usage", {}).get("completion_tokens"), None
            latency = time.perf_counter() - start
            # A server may end the connection with an event stream; start the next one afresh.
            if resp.will_close or self.args.stream:
                self._close()
            return {"ok": True, "latency": latency, "completion_tokens": tokens, "ttft": ttft}
        except Exception as e:  # a dropped connection is an error, not the end of the run
            self._close()
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    def _close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    @staticmethod
    def _read_stream(resp, start):
        """Reads SSE events to [DONE]; returns (completion tokens, seconds to the first content)."""
        ttft = None
        usage_tokens = None
        content_chunks = 0
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, `: ping` comments, event names
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens", usage_tokens)
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    content_chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - start
        # Without a usage chunk, count content chunks (one token each on both servers).
        return (usage_tokens if usage_tokens is not None else content_chunks), ttft


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--model", help="the request's `model` (left out when not given)")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--requests", type=int, default=None, help="total requests (default 4 x clients)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--api-key")
    p.add_argument("--label", default="")
    p.add_argument("--stream", action="store_true", help="stream, and measure time to first content token")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    args = p.parse_args()
    if args.requests is None:
        args.requests = 4 * args.clients

    warm = Client(args).request()
    if not warm["ok"]:
        print(f"# warm-up failed: {warm['error']}", file=sys.stderr)

    lock = threading.Lock()
    left = [args.requests]
    results = []

    def worker():
        c = Client(args)
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            r = c.request()
            with lock:
                results.append(r)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.clients) as pool:
        for f in [pool.submit(worker) for _ in range(args.clients)]:
            f.result()
    wall = time.perf_counter() - start

    ok = [r for r in results if r["ok"]]
    errors = [r for r in results if not r["ok"]]
    if errors:
        print(f"# {len(errors)} errors; first: {errors[0]['error']}", file=sys.stderr)
    tokens = sum(r["completion_tokens"] or 0 for r in ok)
    latencies = [r["latency"] for r in ok]
    ttfts = [r["ttft"] for r in ok if r.get("ttft") is not None]
    print(json.dumps({
        "label": args.label,
        "clients": args.clients,
        "requests": args.requests,
        "ok": len(ok),
        "errors": len(errors),
        "wall_s": r4(wall),
        "total_completion_tokens": tokens,
        "agg_tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
        "latency_p50": r4(percentile(latencies, 50)),
        "latency_p90": r4(percentile(latencies, 90)),
        "latency_p99": r4(percentile(latencies, 99)),
        "ttft_p50": r4(percentile(ttfts, 50)) if args.stream else None,
        "max_tokens": args.max_tokens,
        "stream": args.stream,
    }), flush=True)


if __name__ == "__main__":
    main()
