#!/usr/bin/env bash
# Instructions per request on the request threads, by callgrind: the figure that repeats on a shared,
# noisy host where wall-clock time does not.
#
#   benches/callgrind.sh [seconds=10] [--set key=value ...]
#
# Starts the release gateway under valgrind (breast-cancer champion only unless --set says otherwise),
# warms it up with wrk, zeroes the counters, runs wrk (16 connections, the body of benches/load.sh: one
# holdout row as JSON) for `seconds`, dumps the counters, and prints the user-space instructions of
# the threads that served the requests (those whose profile holds `serve_infer`: the async workers)
# divided by the requests wrk counted. BENCH_GAUNTLET=path measures another build. BENCH_CLUSTER=1
# runs the gateway in cluster mode against a PostgreSQL of the script's own (Debian's `postgresql`;
# initdb and pg_ctl as the `postgres` user when run as root), to show the store stays off the
# request path. BENCH_PROTOCOL=grpc sends ModelInfer over gRPC instead, with `gauntlet loadtest
# --protocol grpc` (16 connections of one call each) as the load generator, and counts the threads
# whose profile holds `model_infer`; BENCH_PROTOCOL=grpc-h2load sends `seconds` × 2,000 calls with
# h2load (4 connections × 4 streams, `apt-get install nghttp2-client`). BENCH_TOKEN=T configures one token with the `infer` scope (by its SHA-256) and sends
# it with every request, so the figure includes the check; BENCH_HEADER='Name: value' sends one more
# header of another name (what receiving a header costs, without a check). BENCH_CONFIG=file serves
# another configuration than gauntlet.toml (an `s3://` repository, say). Needs valgrind and wrk (`apt-get install
# valgrind wrk`). Traffic goes to 127.0.0.1 only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
seconds="${1:-10}"
shift || true
gauntlet="${BENCH_GAUNTLET:-target/release/gauntlet}"
[ -n "${BENCH_GAUNTLET:-}" ] || cargo build --release --quiet --bin gauntlet
for tool in valgrind wrk; do
  command -v "$tool" >/dev/null || { echo "$tool is needed: apt-get install valgrind wrk" >&2; exit 1; }
done

work="$(mktemp -d)"
port="${BENCH_PORT:-19150}"
pid=""
. benches/postgres.sh
trap cleanup EXIT
if [ -n "${BENCH_CLUSTER:-}" ]; then
  start_postgres "$work/pg" $((port + 1))
  set -- "$@" --set "cluster.database_url=$POSTGRES_URL"
fi

wrk_auth=()
[ -z "${BENCH_HEADER:-}" ] || wrk_auth=(-H "$BENCH_HEADER")
if [ -n "${BENCH_TOKEN:-}" ]; then
  digest=$(printf %s "$BENCH_TOKEN" | sha256sum | cut -d' ' -f1)
  set -- "$@" --set "auth.tokens=[{name = \"bench\", sha256 = \"$digest\", scopes = [\"infer\"]}]"
  wrk_auth=(-H "Authorization: Bearer $BENCH_TOKEN")
fi

valgrind --tool=callgrind --separate-threads=yes --dump-instr=no --callgrind-out-file="$work/cg.out" \
  "$gauntlet" serve --config "${BENCH_CONFIG:-gauntlet.toml}" --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$((port + 2))" --set log_level=warn \
  --set 'models.breast-cancer.challengers=[]' --set "outcomes.dir=$work/outcomes" --set "state_dir=$work/state" \
  "$@" 2>"$work/gateway.log" &
pid=$!
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/gateway.log" >&2; exit 1; }
  sleep 0.5
done
. benches/body.sh
write_body "$work"
{ cat "$work/body.lua"; cat <<LUA
done = function(summary, latency, requests)
  io.write(string.format("REQUESTS %d %d\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
} >"$work/post.lua"
url="http://127.0.0.1:$port/v2/models/breast-cancer/infer"
grpc_load() { # seconds
  "$gauntlet" loadtest --url "http://127.0.0.1:$port" --grpc-url "http://127.0.0.1:$((port + 2))" --protocol grpc \
    --model breast-cancer --data models/breast-cancer/holdout.csv --concurrency 16 --connections 16 \
    --duration "$1s" --quiet --json ${BENCH_TOKEN:+--token "$BENCH_TOKEN"}
}
if [ "${BENCH_PROTOCOL:-http}" = grpc-h2load ]; then
  # h2load's 4 connections of 4 streams each, as benches/grpc.sh compares them with REST.
  grpc_h2load() { # requests
    h2load -c 4 -m 4 -t 1 -n "$1" -d "$work/body.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
      "http://127.0.0.1:$((port + 2))/inference.GRPCInferenceService/ModelInfer" | awk '/^status codes:/ {print $3}'
  }
  grpc_h2load 5000 >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  n=$((seconds * 2000))
  ok=$(grpc_h2load "$n")
  echo "$n $((n - ok))" >"$work/requests"
elif [ "${BENCH_PROTOCOL:-http}" = grpc ]; then
  grpc_load 5 >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  grpc_load "$seconds" | python3 -c 'import json, sys; s = json.load(sys.stdin); print(s["requests"], s["errors"])' >"$work/requests"
else
  wrk -t2 -c16 -d5s "${wrk_auth[@]}" -s "$work/post.lua" "$url" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  wrk -t2 -c16 -d"${seconds}s" "${wrk_auth[@]}" -s "$work/post.lua" "$url" | awk '/^REQUESTS/ {print $2, $3}' >"$work/requests"
fi
callgrind_control -d "$pid" >/dev/null 2>&1
python3 - "$work" <<'EOF'
import glob, sys
work = sys.argv[1]
requests, errors = map(int, open(f"{work}/requests").read().split())
# wrk counts the requests still in flight when it stops as errors: a few, against thousands.
assert requests > 0 and errors <= 32, f"{requests} requests, {errors} errors"
total, threads = 0, 0
for path in glob.glob(f"{work}/cg.out*"):
    text = open(path, errors="replace").read()
    if "serve_infer" not in text and "model_infer" not in text:
        continue
    # The last dump of each thread holds the counts since the zeroing.
    for line in text.splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            value = int(line.split()[1])
    total += value
    threads += 1
print(f"{total / requests:.0f} instructions per request on {threads} request threads ({requests} requests, {errors} cut off)")
EOF
