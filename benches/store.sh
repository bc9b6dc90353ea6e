#!/usr/bin/env bash
# How fast the cluster store takes what one replica writes, and how fast the analyst joins it.
#
#   benches/store.sh [records=20000]
#
# 1. A one-node release gateway (the demo: champion and two challengers, every request shadowed)
#    takes `records` labelled holdout requests from `gauntlet loadtest --feedback`; its outcome log
#    then holds that many paired records and labels. It stops.
# 2. A cluster-mode gateway starts on that log as its spool, against a PostgreSQL of the script's own
#    (benches/postgres.sh): the time until its forwarder has loaded every record and label gives
#    the lines a second one replica writes to the store, and the time until the analyst's report
#    counts every label, the labels it joins a second.
# Traffic goes to 127.0.0.1 only. BENCH_GAUNTLET=path measures another build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
records="${1:-20000}"
gauntlet="${BENCH_GAUNTLET:-target/release/gauntlet}"
[ -n "${BENCH_GAUNTLET:-}" ] || cargo build --release --quiet --bin gauntlet
work="$(mktemp -d)"
port="${BENCH_PORT:-19160}"
pid=""
. benches/postgres.sh
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  wait 2>/dev/null || true
  stop_postgres "$work/pg"
  rm -rf "$work"
}
trap cleanup EXIT
serve() {
  "$gauntlet" serve --config gauntlet.toml --listen "127.0.0.1:$port" --set log_level=warn \
    --set "outcomes.dir=$work/outcomes" --set "state_dir=$work/state" --set drift.enabled=false \
    --set shadow_cpu_budget=2 --set shadow_deadline_ms=10000 "$@" 2>>"$work/gateway.log" &
  pid=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && return
    kill -0 "$pid" 2>/dev/null || { cat "$work/gateway.log" >&2; exit 1; }
    sleep 0.1
  done
}
metric() { curl -sf "http://127.0.0.1:$port/metrics" | awk -v m="$1" 'index($0, m " ") == 1 {print $2}'; }

serve
"$gauntlet" loadtest --url "http://127.0.0.1:$port" --model breast-cancer --data models/breast-cancer/holdout.csv \
  --concurrency 8 --requests "$records" --feedback --feedback-delay 1ms --quiet >/dev/null
kill -TERM "$pid"; wait "$pid" || true; pid=""
lines=$(cat "$work"/outcomes/*.jsonl | wc -l)
echo "spool: $lines lines ($(du -sh "$work/outcomes" | cut -f1)) from $records labelled requests"

start_postgres "$work/pg" $((port + 1))
serve --set "cluster.database_url=$POSTGRES_URL"
start=$(date +%s.%N)
forwarded="" joined=""
while [ -z "$forwarded" ] || [ -z "$joined" ]; do
  now=$(date +%s.%N)
  if [ -z "$forwarded" ]; then
    r=$(metric 'gauntlet_cluster_forwarded_total{kind="record"}'); l=$(metric 'gauntlet_cluster_forwarded_total{kind="label"}')
    if [ "${r%.*}" -ge "$records" ] 2>/dev/null && [ "${l%.*}" -ge "$records" ] 2>/dev/null; then forwarded=$now; fi
  fi
  if [ -z "$joined" ]; then
    labelled=$(curl -sf "http://127.0.0.1:$port/admin/models/breast-cancer/comparison" | python3 -c 'import json,sys; print(json.load(sys.stdin)["labelled_records"])' 2>/dev/null || echo 0)
    [ "$labelled" -ge "$records" ] 2>/dev/null && joined=$now
  fi
  python3 -c "import sys; sys.exit(0 if float('$now') - float('$start') < 600 else 1)" || { echo "timed out" >&2; exit 1; }
  sleep 0.05
done
python3 - "$start" "$forwarded" "$joined" "$records" <<'PY'
import sys
start, forwarded, joined, n = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
f, j = forwarded - start, joined - start
print(f"forwarded {n} records and {n} labels in {f:.2f} s from the replica turning ready: {n / f:,.0f} records/s "
      f"(and as many labels); the analyst's report counted all {n} labels {j:.2f} s after it: {n / j:,.0f} labels joined/s")
PY
