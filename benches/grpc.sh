#!/usr/bin/env bash
# One-row requests over gRPC against REST's JSON, side by side in one run: the same gateway process
# (breast-cancer champion only), the same load generator (`gauntlet loadtest`, closed loop), the same
# holdout rows, alternating rounds so machine noise hits both alike.
#
#   benches/grpc.sh [rounds=3] [seconds=10] [concurrency=16] [rows per request=1]
#
# REST: `loadtest --protocol http` (JSON bodies over HTTP/1.1 keep-alive, one connection per request
# in flight). gRPC: `loadtest --protocol grpc` (ModelInfer with raw_input_contents, as tritonclient
# sends it, over as many HTTP/2 connections as requests in flight). Prints each round and the medians
# with gRPC's ratio to REST. Traffic goes to 127.0.0.1 only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds="${1:-3}" seconds="${2:-10}" concurrency="${3:-16}" batch="${4:-1}"
cd "$root"
gauntlet="${BENCH_GAUNTLET:-target/release/gauntlet}"
[ -n "${BENCH_GAUNTLET:-}" ] || cargo build --release --quiet --bin gauntlet

work="$(mktemp -d)"
pid=""
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port="${BENCH_PORT:-19160}"
"$gauntlet" serve --config gauntlet.toml --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$((port + 1))" \
  --set log_level=warn --set 'models.breast-cancer.challengers=[]' --set "outcomes.dir=$work/outcomes" \
  --set "state_dir=$work/state" 2>"$work/gateway.log" &
pid=$!
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/gateway.log" >&2; exit 1; }
  sleep 0.5
done
load() { # protocol seconds
  "$gauntlet" loadtest --url "http://127.0.0.1:$port" --grpc-url "http://127.0.0.1:$((port + 1))" \
    --protocol "$1" --model breast-cancer --data models/breast-cancer/holdout.csv \
    --concurrency "$concurrency" --connections "$concurrency" --batch "$batch" --duration "$2s" --quiet --json
}
load http 3 >/dev/null
load grpc 3 >/dev/null
for round in $(seq "$rounds"); do
  for protocol in http grpc; do
    load "$protocol" "$seconds" >"$work/$protocol.$round.json"
  done
done
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
runs = {p: [json.load(open(f"{work}/{p}.{r}.json")) for r in range(1, rounds + 1)] for p in ("http", "grpc")}
print(f"{'protocol':<9} {'round':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
for r in range(rounds):
    for p in ("http", "grpc"):
        s = runs[p][r]
        print(f"{p:<9} {r + 1:>5} {s['rps']:>9.0f} {s['latency_ms']['p50']:>8.3f} {s['latency_ms']['p99']:>8.3f} {s['errors']:>7}")
med = {p: {k: statistics.median(f(s) for s in runs[p]) for k, f in
           [("rps", lambda s: s["rps"]), ("p50", lambda s: s["latency_ms"]["p50"]), ("p99", lambda s: s["latency_ms"]["p99"])]}
       for p in runs}
print(f"median    http {med['http']['rps']:.0f} req/s p50 {med['http']['p50']:.3f} p99 {med['http']['p99']:.3f} ms; "
      f"grpc {med['grpc']['rps']:.0f} req/s p50 {med['grpc']['p50']:.3f} p99 {med['grpc']['p99']:.3f} ms")
print(f"grpc/http throughput {med['grpc']['rps'] / med['http']['rps']:.2f}, p50 {med['grpc']['p50'] / med['http']['p50']:.2f}")
errors = sum(s["errors"] for p in runs for s in runs[p])
assert errors == 0, f"{errors} requests failed"
PY
