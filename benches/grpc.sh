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
#
# Then the load generator itself against one that is not ours, when h2load is installed
# (`apt-get install nghttp2-client`): `loadtest --protocol grpc` and `h2load` with the same request
# bytes (the first holdout row's ModelInfer message, gRPC-framed), the same 4 connections and the
# same requests in flight (4 streams each), alternating; prints loadtest's share of h2load's
# throughput (issue 35 asks for at least 0.90).
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

command -v h2load >/dev/null || { echo "h2load is not installed: the generator comparison is skipped"; exit 0; }
# The first holdout row as a gRPC-framed ModelInfer message (written here by hand: the fields are
# few, and the bench needs no protobuf package).
python3 - "$work/body.bin" <<'PY'
import csv, struct, sys
row = [float(v) for v in next(r for i, r in enumerate(csv.reader(open("models/breast-cancer/holdout.csv"))) if i == 1)[:-1]]
def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out
def field(number, payload):  # length-delimited
    return varint(number << 3 | 2) + varint(len(payload)) + payload
shape = varint(1) + varint(len(row))
tensor = field(1, b"input") + field(2, b"FP32") + field(3, shape)
message = field(1, b"breast-cancer") + field(5, tensor) + field(7, struct.pack(f"<{len(row)}f", *row))
open(sys.argv[1], "wb").write(b"\0" + struct.pack(">I", len(message)) + message)
PY
h2() { # seconds
  h2load -c 4 -m 4 -t 1 -D "$1" -d "$work/body.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$((port + 1))/inference.GRPCInferenceService/ModelInfer" 2>&1 |
    python3 -c 'import re, sys; t = sys.stdin.read(); m = re.search(r"finished in .*?, ([0-9.]+) req/s", t); ok = re.search(r"status codes: (\d+) 2xx", t); print(m.group(1) if m else 0, ok.group(1) if ok else 0)'
}
ours() { # seconds
  "$gauntlet" loadtest --url "http://127.0.0.1:$port" --grpc-url "http://127.0.0.1:$((port + 1))" \
    --protocol grpc --model breast-cancer --data models/breast-cancer/holdout.csv \
    --concurrency 16 --connections 4 --duration "$1s" --quiet --json |
    python3 -c 'import json, sys; s = json.load(sys.stdin); print(s["rps"], s["errors"])'
}
h2 3 >/dev/null
printf '%-9s %5s %9s\n' generator round req/s
ratios=()
for round in $(seq "$rounds"); do
  read -r theirs answered < <(h2 "$seconds")
  read -r mine errors < <(ours "$seconds")
  [ "$errors" = 0 ] || { echo "loadtest: $errors errors" >&2; exit 1; }
  [ "$answered" -gt 0 ] || { echo "h2load: no 2xx answers" >&2; exit 1; }
  printf '%-9s %5s %9.0f\n%-9s %5s %9.0f\n' h2load "$round" "$theirs" loadtest "$round" "$mine"
  ratios+=("$(python3 -c "print($mine / $theirs)")")
done
python3 - "${ratios[@]}" <<'PY'
import statistics, sys
r = [float(x) for x in sys.argv[1:]]
print(f"loadtest/h2load throughput, median of {len(r)}: {statistics.median(r):.2f} (rounds: {', '.join(f'{x:.2f}' for x in r)})")
PY
