#!/usr/bin/env bash
# gRPC against REST, side by side in one run: one gateway process serving both (breast-cancer
# champion only), alternating rounds so machine noise hits both alike. Traffic goes to 127.0.0.1 only.
#
#   benches/grpc.sh [rounds=3] [seconds=10] [concurrency=16] [rows per request=1]
#
# 1. Load generators that are not ours (issue 35's figure), when wrk and h2load are installed
#    (`apt-get install wrk nghttp2-client`): `wrk -t1 -c16` POSTing the rows as JSON against REST,
#    `h2load -t1 -c4 -m4` (16 streams) sending the same rows as a gRPC-framed ModelInfer with
#    raw_input_contents (as tritonclient sends it). h2load sees HTTP statuses only, so the
#    gateway's own count of requests that did not succeed (/metrics) must stay 0. Prints req/s, p50
#    and p99 (wrk's latency distribution; h2load's per-request log) and gRPC's ratios to REST.
# 2. Our own generator on both protocols: `loadtest --protocol http` (JSON over HTTP/1.1 keep-alive,
#    one connection per request in flight) and `loadtest --protocol grpc` (as many HTTP/2 connections
#    as requests in flight).
# 3. Our gRPC generator against h2load with the same request bytes, the same 4 connections and the
#    same 16 requests in flight, alternating: loadtest's share of h2load's throughput (issue 35 asks
#    for at least 0.90). BENCH_LOADTEST_BASELINE=path adds another build's generator to each round.
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
. benches/body.sh
write_bodies "$work" "$batch"
rest_wrk() { # seconds: "req/s p50_ms p99_ms"
  wrk -t1 -c16 -d"$1s" --latency -s "$work/body.lua" "http://127.0.0.1:$port/v2/models/breast-cancer/infer" |
    python3 -c '
import re, sys
t = sys.stdin.read()
ms = lambda v, u: float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[u]
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", t).group(1))
p = {q: ms(*re.search(rf"^\s+{q}%\s+([0-9.]+)(us|ms|s)", t, re.M).groups()) for q in ("50", "99")}
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(rps, p["50"], p["99"], bad.group(1) if bad else 0)'
}
grpc_h2load() { # seconds: "req/s p50_ms p99_ms non-200"
  rm -f "$work/h2.log"
  h2load -c 4 -m 4 -t 1 -D "$1" -d "$work/body.bin" --log-file="$work/h2.log" -H 'content-type: application/grpc' \
    -H 'te: trailers' "http://127.0.0.1:$((port + 1))/inference.GRPCInferenceService/ModelInfer" >"$work/h2.out" 2>&1
  python3 - "$work/h2.log" "$1" <<'PY'
import sys
rows = [line.split("\t") for line in open(sys.argv[1])]
done = sorted(int(r[2]) for r in rows if r[1] == "200")
print(len(done) / float(sys.argv[2]), done[len(done) // 2] / 1e3, done[int(len(done) * 0.99)] / 1e3, len(rows) - len(done))
PY
}
if command -v wrk >/dev/null && command -v h2load >/dev/null; then
  rest_wrk 3 >/dev/null
  grpc_h2load 3 >/dev/null
  for round in $(seq "$rounds"); do
    rest_wrk "$seconds" >"$work/wrk.$round"
    grpc_h2load "$seconds" >"$work/h2load.$round"
  done
  python3 - "$work" "$rounds" <<'PY'
import statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
runs = {g: [list(map(float, open(f"{work}/{g}.{r}").read().split())) for r in range(1, rounds + 1)] for g in ("wrk", "h2load")}
print(f"{'generator':<16} {'round':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
for r in range(rounds):
    for g, label in (("wrk", "wrk REST"), ("h2load", "h2load gRPC")):
        rps, p50, p99, bad = runs[g][r]
        print(f"{label:<16} {r + 1:>5} {rps:>9.0f} {p50:>8.3f} {p99:>8.3f} {bad:>7.0f}")
med = {g: [statistics.median(run[k] for run in runs[g]) for k in range(3)] for g in runs}
print(f"median    REST (wrk) {med['wrk'][0]:.0f} req/s p99 {med['wrk'][2]:.3f} ms; gRPC (h2load) {med['h2load'][0]:.0f} req/s p99 {med['h2load'][2]:.3f} ms")
print(f"gRPC/REST with generators not ours: throughput {med['h2load'][0] / med['wrk'][0]:.2f}, p99 {med['h2load'][2] / med['wrk'][2]:.2f} (issue 35: >= 1.0, p99 <= 1.0)")
failed = sum(run[3] for g in runs for run in runs[g])
assert failed == 0, f"{failed} requests failed"
PY
  # A gRPC failure is an HTTP 200 with a grpc-status trailer: the gateway counts it by its outcome.
  curl -sf "http://127.0.0.1:$port/metrics" | python3 -c '
import re, sys
bad = sum(float(v) for o, v in re.findall(r"^gauntlet_inference_requests_total\{[^}]*outcome=\"([^\"]+)\"[^}]*\} (\S+)", sys.stdin.read(), re.M) if o != "ok")
assert bad == 0, f"the gateway counted {bad:.0f} requests that did not succeed"'
else
  echo "wrk and h2load are not both installed: the comparison with generators not ours is skipped"
fi

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
h2() { # seconds
  h2load -c 4 -m 4 -t 1 -D "$1" -d "$work/body.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$((port + 1))/inference.GRPCInferenceService/ModelInfer" 2>&1 |
    python3 -c 'import re, sys; t = sys.stdin.read(); m = re.search(r"finished in .*?, ([0-9.]+) req/s", t); ok = re.search(r"status codes: (\d+) 2xx", t); print(m.group(1) if m else 0, ok.group(1) if ok else 0)'
}
ours() { # seconds [binary]
  "${2:-$gauntlet}" loadtest --url "http://127.0.0.1:$port" --grpc-url "http://127.0.0.1:$((port + 1))" \
    --protocol grpc --model breast-cancer --data models/breast-cancer/holdout.csv \
    --concurrency 16 --connections 4 --threads "${BENCH_LOADTEST_THREADS:-1}" --batch "$batch" --duration "$1s" --quiet --json |
    python3 -c 'import json, sys; s = json.load(sys.stdin); print(s["rps"], s["errors"])'
}
h2 3 >/dev/null
printf '%-9s %5s %9s\n' generator round req/s
ratios=() baseline_ratios=()
for round in $(seq "$rounds"); do
  read -r theirs answered < <(h2 "$seconds")
  read -r mine errors < <(ours "$seconds")
  [ "$errors" = 0 ] || { echo "loadtest: $errors errors" >&2; exit 1; }
  [ "$answered" -gt 0 ] || { echo "h2load: no 2xx answers" >&2; exit 1; }
  printf '%-9s %5s %9.0f\n%-9s %5s %9.0f\n' h2load "$round" "$theirs" loadtest "$round" "$mine"
  ratios+=("$(python3 -c "print($mine / $theirs)")")
  # BENCH_LOADTEST_BASELINE=path: another build's generator too, in the same rounds.
  if [ -n "${BENCH_LOADTEST_BASELINE:-}" ]; then
    read -r old errors < <(ours "$seconds" "$BENCH_LOADTEST_BASELINE")
    printf '%-9s %5s %9.0f\n' baseline "$round" "$old"
    baseline_ratios+=("$(python3 -c "print($old / $theirs)")")
  fi
done
python3 - "${ratios[@]}" -- "${baseline_ratios[@]}" <<'PY'
import statistics, sys
args = sys.argv[1:]
split = args.index("--")
for label, r in (("loadtest", args[:split]), ("baseline", args[split + 1:])):
    r = [float(x) for x in r]
    if r:
        print(f"{label}/h2load throughput, median of {len(r)}: {statistics.median(r):.2f} (rounds: {', '.join(f'{x:.2f}' for x in r)})")
PY
