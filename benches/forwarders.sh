#!/usr/bin/env bash
# How many replicas one PostgreSQL keeps up with: N replicas forward their spools into it at once.
#
#   benches/forwarders.sh [requests=20000] [N ...=1 2 4 8]
#
# 1. A one-node release gateway takes `requests` labelled holdout requests (every request shadowed by
#    the demo's challengers); its outcome log is the spool one replica writes.
# 2. For each N: a fresh schema; N cluster-mode gateways start, each on its own copy of that spool
#    (request ids made distinct per replica), all forwarding at once into one PostgreSQL on this host.
#    Timed: from the first replica turning ready (the others start forwarding as they come up, so
#    larger N is if anything understated) to every row in the tables. Printed: rows/s into the
#    store in total, and how many replicas at full coverage that is (a replica's rows/s at its
#    shadow's maximum is measured in step 1: records and labels it wrote per second of traffic).
# All on the same 2 cores as the gateways themselves. Traffic goes to 127.0.0.1 only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
requests="${1:-20000}"
shift || true
if [ "$#" -gt 0 ]; then counts=("$@"); else counts=(1 2 4 8); fi
gauntlet="${BENCH_GAUNTLET:-target/release/gauntlet}"
[ -n "${BENCH_GAUNTLET:-}" ] || cargo build --release --quiet --bin gauntlet
work="$(mktemp -d)"
port="${BENCH_PORT:-19360}"
pid=""
pids=()
. benches/postgres.sh
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; cleanup' EXIT
start_postgres "$work/pg" $((port + 99))
psql() { as_postgres "$(postgres_bin)/psql" -h "$work/pg" -p $((port + 99)) -U postgres -d postgres -qAt "$@"; }

# serve DIR PORT [--set ...]: a gateway with its files in DIR; sets $last_pid.
serve() {
  local dir="$1" at="$2"
  shift 2
  "$gauntlet" serve --config gauntlet.toml --listen "127.0.0.1:$at" --grpc-listen "" --set log_level=warn \
    --set "outcomes.dir=$dir/outcomes" --set "state_dir=$dir/state" --set drift.enabled=false \
    --set shadow_cpu_budget=2 --set shadow_deadline_ms=10000 "$@" 2>>"$dir.log" &
  last_pid=$!
  wait_ready "$at" "$last_pid" "$dir.log"
}

serve "$work/one" "$port"; pid=$last_pid
started=$(date +%s.%N)
"$gauntlet" loadtest --url "http://127.0.0.1:$port" --model breast-cancer --data models/breast-cancer/holdout.csv \
  --concurrency 2 --requests "$requests" --feedback --feedback-delay 1ms --quiet >/dev/null
took=$(echo "$(date +%s.%N) - $started" | bc)
kill -TERM "$pid"; wait "$pid" || true; pid=""
lines=$(cat "$work"/one/outcomes/*.jsonl | wc -l)
per_replica=$(echo "$lines / $took" | bc)
echo "one replica at full coverage (every request shadowed, 2 in flight, on these 2 cores): $lines rows in $took s: $per_replica rows/s"

for n in "${counts[@]}"; do
  psql -c "DROP SCHEMA IF EXISTS gauntlet CASCADE"
  pids=()
  for i in $(seq "$n"); do
    mkdir -p "$work/r$i/outcomes"
    for f in "$work"/one/outcomes/*.jsonl; do
      sed "s/\"request_id\":\"/\"request_id\":\"r$i-/" "$f" >"$work/r$i/outcomes/$(basename "$f")"
    done
    rm -f "$work/r$i/outcomes/.forwarded.json"
  done
  for i in $(seq "$n"); do
    serve "$work/r$i" $((port + i)) --set "cluster.database_url=$POSTGRES_URL" --set "cluster.replica_id=r$i"
    pids+=("$last_pid")
    # From the first replica turning ready: the others forward as they come up.
    [ "$i" = 1 ] && ready=$(date +%s.%N)
  done
  expected=$((lines * n))
  # Polled from the replicas' own counters of committed rows, not with count(*): a scan of the
  # growing tables every 50 ms took a good part of the database's CPU (perf) from what is measured.
  for _ in $(seq 6000); do
    forwarded=0
    for i in $(seq "$n"); do
      c=$(curl -sf "http://127.0.0.1:$((port + i))/metrics" |
        awk '/^gauntlet_cluster_forwarded_total\{.*kind="(record|label)"/ { s += $NF } END { print s + 0 }')
      forwarded=$((forwarded + ${c%.*}))
    done
    [ "$forwarded" -ge "$expected" ] && break
    sleep 0.05
  done
  took=$(echo "$(date +%s.%N) - $ready" | bc)
  stored=$(psql -c "SELECT (SELECT count(*) FROM gauntlet.records) + (SELECT count(*) FROM gauntlet.labels)")
  [ "$stored" -eq "$expected" ] || { echo "the store holds $stored rows, not $expected" >&2; exit 1; }
  rate=$(echo "$stored / $took" | bc)
  echo "N=$n replicas forwarding at once: $stored rows in $took s from the first turning ready: $rate rows/s into the store, $(echo "scale=1; $rate / $per_replica" | bc) replicas' worth at full coverage"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  rm -rf "$work"/r*
done
