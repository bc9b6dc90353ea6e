#!/usr/bin/env bash
# Load baseline: the bare hyper floor vs the gateway, same client, same body, one run:
#   floor     a bare hyper server answering a fixed body of the same size
#   champion  the gateway, breast-cancer champion only (drift monitoring on, as by default)
#   no-drift  the same with drift monitoring off: the cost of drift is champion vs no-drift
#   shadowed  the gateway with the demo's two challengers scoring every request
#
#   benches/load.sh [rounds=3] [seconds=10] [connections=16]
#
# Builds once (release), starts both servers on loopback, alternates wrk runs between them so
# machine noise hits both alike, and prints the median req/s, p50 and p99 of each with the gateway's
# ratio to the floor. Needs wrk (`apt-get install wrk`). Traffic goes to 127.0.0.1 only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds="${1:-3}" seconds="${2:-10}" connections="${3:-16}"
# BENCH_WRK_THREADS: wrk's threads (default 2; issue 35 measured with -t1, which leaves a core to the server).
threads="${BENCH_WRK_THREADS:-2}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cd "$root"
# BENCH_GAUNTLET / BENCH_FLOOR: measure prebuilt binaries instead of building.
gauntlet="${BENCH_GAUNTLET:-target/release/gauntlet}" floor="${BENCH_FLOOR:-target/release/examples/http_floor}"
[ -n "${BENCH_GAUNTLET:-}" ] || cargo build --release --quiet --bin gauntlet --example http_floor

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

floor_port=19100 gateway_port=19101 shadowed_port=19102 nodrift_port=19103
"$floor" "127.0.0.1:$floor_port" 2>"$work/floor.log" & pids+=($!)
"$gauntlet" serve --config gauntlet.toml --listen "127.0.0.1:$gateway_port" --grpc-listen "" --set log_level=warn \
  --set 'models.breast-cancer.challengers=[]' --set "outcomes.dir=$work/outcomes" --set "state_dir=$work/state" \
  2>"$work/gateway.log" & pids+=($!)
"$gauntlet" serve --config gauntlet.toml --listen "127.0.0.1:$nodrift_port" --grpc-listen "" --set log_level=warn \
  --set 'models.breast-cancer.challengers=[]' --set drift.enabled=false --set "outcomes.dir=$work/outcomes-nodrift" \
  --set "state_dir=$work/state-nodrift" \
  2>"$work/nodrift.log" & pids+=($!)
"$gauntlet" serve --config gauntlet.toml --listen "127.0.0.1:$shadowed_port" --grpc-listen "" --set log_level=warn \
  --set "outcomes.dir=$work/outcomes-shadowed" --set "state_dir=$work/state-shadowed" 2>"$work/shadowed.log" & pids+=($!)
for port in $floor_port $gateway_port $nodrift_port $shadowed_port; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && break; \
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

. benches/body.sh
write_body "$work"
{ cat "$work/body.lua"; cat <<LUA
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.1f %.1f %.1f %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
} >"$work/post.lua"

run() { # name url
  wrk -t"$threads" -c"$connections" -d"${seconds}s" -s "$work/post.lua" "$2" | awk -v n="$1" '/^RESULT/ {print n, $2, $3, $4, $5}'
}
: >"$work/results"
wrk -t"$threads" -c"$connections" -d2s -s "$work/post.lua" "http://127.0.0.1:$gateway_port/v2/models/breast-cancer/infer" >/dev/null # warm
for r in $(seq "$rounds"); do
  run floor "http://127.0.0.1:$floor_port/v2/models/breast-cancer/infer" >>"$work/results"
  run champion "http://127.0.0.1:$gateway_port/v2/models/breast-cancer/infer" >>"$work/results"
  run no-drift "http://127.0.0.1:$nodrift_port/v2/models/breast-cancer/infer" >>"$work/results"
  run shadowed "http://127.0.0.1:$shadowed_port/v2/models/breast-cancer/infer" >>"$work/results"
done

python3 - "$work/results" "$rounds" "$seconds" "$connections" "$threads" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for name, rps, p50, p99, errors in rows:
    by.setdefault(name, []).append((float(rps), float(p50), float(p99), int(errors)))
med = {n: [statistics.median(x[i] for x in v) for i in range(3)] + [sum(x[3] for x in v)] for n, v in by.items()}
print(f"wrk -t{sys.argv[5]} -c{sys.argv[4]}, {sys.argv[3]}s x {sys.argv[2]} rounds alternating; medians (latency in ms)")
print(f"{'server':<10} {'req/s':>10} {'p50':>8} {'p99':>8} {'errors':>7} {'req/s vs floor':>15}")
floor = med["floor"][0]
for name, (rps, p50, p99, errors) in med.items():
    print(f"{name:<10} {rps:>10.0f} {p50/1000:>8.3f} {p99/1000:>8.3f} {errors:>7} {rps/floor:>14.0%}")
if "no-drift" in med:
    on, off = med["champion"], med["no-drift"]
    print(f"drift on vs off: req/s {on[0]/off[0]:.3f}x, p50 {on[1]/off[1]:.3f}x, p99 {on[2]/off[2]:.3f}x")
PY
