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
# 3. It restarts: as the analyst again it resumes from its checkpoint and reads the rows after it
#    (the failover cost; `benches/failover.sh` measures it with millions of rows retained).
# Traffic goes to 127.0.0.1 only. BENCH_GAUNTLET=path measures another build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
requests="${1:-20000}"
gauntlet="${BENCH_GAUNTLET:-target/release/gauntlet}"
[ -n "${BENCH_GAUNTLET:-}" ] || cargo build --release --quiet --bin gauntlet
work="$(mktemp -d)"
port="${BENCH_PORT:-19160}"
pid=""
. benches/postgres.sh
trap cleanup EXIT
serve() {
  "$gauntlet" serve --config gauntlet.toml --listen "127.0.0.1:$port" --grpc-listen "" --set log_level=warn \
    --set "outcomes.dir=$work/outcomes" --set "state_dir=$work/state" --set drift.enabled=false \
    --set shadow_cpu_budget=2 --set shadow_deadline_ms=10000 "$@" 2>>"$work/gateway.log" &
  pid=$!
  wait_ready "$port" "$pid" "$work/gateway.log"
}
metric() { curl -sf "http://127.0.0.1:$port/metrics" | awk -v m="$1" 'index($0, m " ") == 1 {print $2}'; }

serve
"$gauntlet" loadtest --url "http://127.0.0.1:$port" --model breast-cancer --data models/breast-cancer/holdout.csv \
  --concurrency 2 --requests "$requests" --feedback --feedback-delay 1ms --quiet >/dev/null
kill -TERM "$pid"; wait "$pid" || true; pid=""
records=$(cat "$work"/outcomes/*.jsonl | grep -c '"kind":"outcome"' || true)
labels=$(cat "$work"/outcomes/*.jsonl | grep -c '"kind":"feedback"' || true)
echo "spool: $records records and $labels labels ($(du -sh "$work/outcomes" | cut -f1)) from $requests labelled requests"

start_postgres "$work/pg" $((port + 1))
serve --set "cluster.database_url=$POSTGRES_URL"
python3 - "$port" "$records" "$labels" "$work/outcomes" <<'PY'
import glob, json, sys, time, urllib.request
port, records, labels = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
# Labels whose record is in the spool (the shadow sheds records under this load, counted): what the
# analyst can join.
scored, labelled_ids = set(), set()
for path in glob.glob(sys.argv[4] + "/*.jsonl"):
    for line in open(path):
        line = json.loads(line)
        (labelled_ids if line["kind"] == "feedback" else scored).add(line["request_id"])
joinable = len(scored & labelled_ids)
base = f"http://127.0.0.1:{port}"
def metric(name):
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    return next((float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + " ")), 0.0)
def labelled():
    try:
        with urllib.request.urlopen(base + "/admin/models/breast-cancer/comparison", timeout=10) as r:
            return json.load(r)["labelled_records"]
    except Exception:
        return 0
start, forwarded, joined = time.time(), None, None
while forwarded is None or joined is None:
    now = time.time()
    assert now - start < 300, "timed out"
    if forwarded is None and metric('gauntlet_cluster_forwarded_total{kind="record"}') >= records \
            and metric('gauntlet_cluster_forwarded_total{kind="label"}') >= labels:
        forwarded = now - start
    if joined is None and labelled() >= joinable:
        joined = now - start
    time.sleep(0.05)
print(f"forwarded {records} records and {labels} labels in {forwarded:.2f} s from the replica turning ready: "
      f"{records / forwarded:,.0f} records/s and {labels / forwarded:,.0f} labels/s; the analyst's report counted "
      f"all {joinable} joinable labels {joined:.2f} s after it: {joinable / joined:,.0f} labels joined/s")
PY
# 3. The same replica restarted: as the new analyst it resumes from the checkpoint.
kill -TERM "$pid"; wait "$pid" || true; pid=""
: >"$work/gateway.log"
serve --set "cluster.database_url=$POSTGRES_URL" --set log_level=info --set log_format=json
for _ in $(seq 600); do
  grep -q 'its comparison is current' "$work/gateway.log" 2>/dev/null && break
  sleep 0.1
done
python3 - "$work/gateway.log" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if "its comparison is current" in line or "resumed from a checkpoint" in line:
        fields = json.loads(line)["fields"]
        print("the restarted analyst:", fields.pop("message"), fields)
PY
