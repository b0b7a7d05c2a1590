#!/usr/bin/env bash
# Benchmark: serving throughput of `tunelab serve` and llama.cpp's llama-server on the same GGUF
# (default SmolLM2-135M-Instruct Q4_1), in the same invocation, when llama-server is built
# (scripts/bench/build-llama-cpp.sh). Each server in turn (never both at once, so they do not
# compete for cores), with 8 slots of CTX tokens each and every core, is loaded by
# scripts/bench/serve_load.py at 1, 4 and 8 concurrent clients, each sending the same chat request
# (temperature 0, at most MAX_TOKENS new tokens) REQUESTS_PER_CLIENT times. Measured: aggregate
# generated tokens per second (usage.completion_tokens over wall time) and request latency
# p50/p90/p99 (with STREAM=1, time to the first token too). One JSON line per run, also kept in a
# results file under ${TMPDIR:-/tmp}; a markdown table at the end.
#   scripts/bench/serve.sh [GGUF]
# Env: MAX_TOKENS (64), REQUESTS_PER_CLIENT (4), CTX per slot (2048), THREADS ($(nproc)),
#      CLIENTS ("1 4 8"), STREAM (unset: non-streamed requests).
set -euo pipefail
model="${1:+$(realpath "$1")}"
cd "$(dirname "$0")/../.."
model="${model:-$(scripts/fetch-smollm2.sh)}"
max_tokens="${MAX_TOKENS:-64}"
per_client="${REQUESTS_PER_CLIENT:-4}"
ctx="${CTX:-2048}"
threads="${THREADS:-$(nproc)}"
read -r -a clients <<<"${CLIENTS:-1 4 8}"
slots=8
# Builds come first (tunelab's, and llama-server's when it is missing); timing starts after them.
cargo build --release --quiet
server=""
if bin="$(scripts/bench/build-llama-cpp.sh)" && [ -x "$bin/llama-server" ]; then
    server="$bin/llama-server"
else
    echo "# llama-server not built: scripts/bench/build-llama-cpp.sh builds it" >&2
fi
results="${TMPDIR:-/tmp}/tunelab-serve-bench-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
: >"$results"
echo "# $(basename "$model"); $slots slots x $ctx ctx; $threads threads; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)" >&2

logs="$(mktemp -d)"
pid=""
stop() { # stop the running server, if any, and wait for it to exit
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
    fi
}
trap 'stop; rm -rf "$logs"' EXIT
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
bench() { # bench NAME COMMAND...: start the server (COMMAND --port P), load it at each client count, stop it
    local name="$1"; shift
    local port log url deadline
    port="$(free_port)"; log="$logs/$name.log"; url="http://127.0.0.1:$port"
    "$@" --port "$port" >"$log" 2>&1 &
    pid=$!
    deadline=$((SECONDS + 120))
    until [ "$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$url/health")" = 200 ]; do
        if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            echo "# $name did not answer $url/health with 200 within 120 s; the end of its log:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        sleep 0.5
    done
    for c in "${clients[@]}"; do
        python3 scripts/bench/serve_load.py --url "$url" --model smollm2 --clients "$c" \
            --requests $((c * per_client)) --max-tokens "$max_tokens" --label "$name" ${STREAM:+--stream} \
            | tee -a "$results"
    done
    stop
}

bench tunelab env RAYON_NUM_THREADS="$threads" target/release/tunelab serve "$model" \
    --parallel "$slots" --ctx "$ctx" --quantized --alias smollm2
if [ -n "$server" ]; then
    # llama-server's -c is the whole KV pool, shared out among the -np slots: CTX tokens each.
    # SmolLM2's GGUF carries a Jinja chat template; --jinja (the default in newer builds) renders it,
    # so both servers put the same messages into the same prompt. Prompt caching is off: every
    # request is the same, and reusing the previous one's KV would skip prefill that tunelab does.
    help="$(LD_LIBRARY_PATH="$bin:${LD_LIBRARY_PATH:-}" "$server" --help 2>&1 || true)"
    extra=()
    if [[ $help == *--jinja* ]]; then extra+=(--jinja); fi
    if [[ $help == *--no-cache-prompt* ]]; then extra+=(--no-cache-prompt); fi
    bench llama-server env LD_LIBRARY_PATH="$bin:${LD_LIBRARY_PATH:-}" "$server" -m "$model" \
        -np "$slots" -c $((slots * ctx)) -t "$threads" --alias smollm2 "${extra[@]}"
fi

echo "# raw results: $results" >&2
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
peer = {r["clients"]: r["agg_tokens_per_s"] for r in rows if r["label"] == "llama-server"}
def f(x, d=2):
    return "-" if x is None else f"{x:.{d}f}"
print()
print("| server | clients | ok/requests | agg tok/s | p50 s | p99 s | tok/s tunelab/llama-server |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    ratio = None
    if r["label"] == "tunelab" and r["agg_tokens_per_s"] and peer.get(r["clients"]):
        ratio = r["agg_tokens_per_s"] / peer[r["clients"]]
    print(f"| {r['label']} | {r['clients']} | {r['ok']}/{r['requests']} | {f(r['agg_tokens_per_s'], 1)} "
          f"| {f(r['latency_p50'], 3)} | {f(r['latency_p99'], 3)} | {f(ratio)} |")
PY
