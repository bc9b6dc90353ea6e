#!/usr/bin/env bash
# How long the cluster is without a fresh comparison when its analyst dies, with many rows retained.
#
#   benches/failover.sh [retained rows=1000000] [seed requests=600]
#
# 1. Two cluster-mode release gateways (replicas A and B) on a PostgreSQL of the script's own
#    (benches/postgres.sh). A takes `seed` labelled holdout requests (`loadtest --feedback`) and is the
#    analyst.
# 2. The stored records and labels are copied under new request ids, in SQL, until the tables hold
#    `retained` rows (records and labels, half each): a store that has kept days of traffic.
# 3. Once A's report counts every label and a checkpoint covers every row, A is SIGKILLed, as a
#    rolling update does. Timed: from the kill to B serving a report that it wrote after the kill and
#    that counts every label. Also printed: the checkpoint's size, and what B logged as it took over.
# Traffic goes to 127.0.0.1 only. BENCH_GAUNTLET=path measures another build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
retained="${1:-1000000}"
seed="${2:-600}"
gauntlet="${BENCH_GAUNTLET:-target/release/gauntlet}"
[ -n "${BENCH_GAUNTLET:-}" ] || cargo build --release --quiet --bin gauntlet
work="$(mktemp -d)"
port="${BENCH_PORT:-19260}"
pid=""
pid_b=""
. benches/postgres.sh
trap 'kill "$pid_b" 2>/dev/null || true; cleanup' EXIT
start_postgres "$work/pg" $((port + 2))
psql() { as_postgres "$(postgres_bin)/psql" -h "$work/pg" -p $((port + 2)) -U postgres -d postgres -qAt "$@"; }

# serve NAME PORT: a replica with its own files; sets $last_pid.
serve() {
  "$gauntlet" serve --config gauntlet.toml --listen "127.0.0.1:$2" --grpc-listen "" --set log_format=json \
    --set "outcomes.dir=$work/$1/outcomes" --set "state_dir=$work/$1/state" --set drift.enabled=false \
    --set shadow_cpu_budget=2 --set shadow_deadline_ms=10000 --set "cluster.database_url=$POSTGRES_URL" \
    --set "cluster.replica_id=$1" 2>>"$work/$1.log" &
  last_pid=$!
  wait_ready "$2" "$last_pid" "$work/$1.log"
}
serve a "$port"; pid=$last_pid
"$gauntlet" loadtest --url "http://127.0.0.1:$port" --model breast-cancer --data models/breast-cancer/holdout.csv \
  --concurrency 2 --requests "$seed" --feedback --feedback-delay 1ms --quiet >/dev/null
# Every seeded row in the store before it is copied.
for _ in $(seq 600); do
  [ "$(psql -c "SELECT count(*) FROM gauntlet.labels")" -ge "$seed" ] && break
  sleep 0.1
done

# Copies of the seed under new ids, each record with its label, in statements of ~200k rows.
psql -c "CREATE TABLE seed_records AS SELECT r.* FROM gauntlet.records r JOIN gauntlet.labels l USING (model, request_id);
         CREATE TABLE seed_labels AS SELECT l.* FROM gauntlet.labels l JOIN gauntlet.records r USING (model, request_id);"
pairs=$(psql -c "SELECT count(*) FROM seed_records")
copies=$(( (retained / 2 + pairs - 1) / pairs ))
per=$(( 100000 / pairs + 1 ))
started=$(date +%s.%N)
for ((k = 1; k <= copies; k += per)); do
  last=$(( k + per - 1 < copies ? k + per - 1 : copies ))
  psql -c "
    INSERT INTO gauntlet.records (model, request_id, at, answered_by, replica, line)
    SELECT model, request_id || '-' || k, at, answered_by, replica,
           replace(line::text, '\"request_id\":\"' || request_id || '\"', '\"request_id\":\"' || request_id || '-' || k || '\"')::json
    FROM seed_records, generate_series($k, $last) k;
    INSERT INTO gauntlet.labels (model, request_id, at, replica, line)
    SELECT model, request_id || '-' || k, at, replica,
           replace(line::text, '\"request_id\":\"' || request_id || '\"', '\"request_id\":\"' || request_id || '-' || k || '\"')::json
    FROM seed_labels, generate_series($k, $last) k;"
done
rows=$(psql -c "SELECT (SELECT count(*) FROM gauntlet.records) + (SELECT count(*) FROM gauntlet.labels)")
labels=$(psql -c "SELECT count(*) FROM gauntlet.records r JOIN gauntlet.labels l USING (model, request_id)")
echo "store: $rows rows ($labels labelled records; $(psql -c "SELECT pg_size_pretty(pg_database_size('postgres'))")), copied in $(echo "$(date +%s.%N) - $started" | bc) s"

serve b $((port + 1)); pid_b=$last_pid
python3 - "$port" "$((port + 1))" "$labels" "$rows" "$pid" "$work" "$POSTGRES_URL" <<'PY'
import json, os, signal, subprocess, sys, time, urllib.request
a, b, labels, rows, pid, work, url = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return json.load(r)
    except Exception:
        return None
def sql(query):
    return subprocess.run(["runuser", "-u", "postgres", "--", "psql", url, "-qAt", "-c", query] if os.getuid() == 0
                          else ["psql", url, "-qAt", "-c", query], capture_output=True, text=True).stdout.strip()
start = time.time()
while True:
    report = get(a, "/admin/models/breast-cancer/comparison")
    covered = sql("SELECT coalesce(max(rows), 0) FROM gauntlet.checkpoints")
    if report and report.get("labelled_records") == labels and int(covered or 0) >= rows:
        break
    assert time.time() - start < 3600, "the analyst did not catch up"
    time.sleep(0.2)
caught = time.time() - start
size = sql("SELECT octet_length(state) FROM gauntlet.checkpoints ORDER BY id DESC LIMIT 1")
print(f"the analyst (replica a) read {rows:,} rows and checkpointed them {caught:.1f} s after replica b was ready; "
      f"its checkpoint: {int(size):,} bytes")
os.kill(pid, signal.SIGKILL)
killed = time.time()
while True:
    report = get(b, "/admin/models/breast-cancer/comparison")
    snap = (report or {}).get("snapshot") or {}
    if snap.get("analyst") == "b" and report.get("labelled_records") == labels:
        break
    assert time.time() - killed < 600, "no fresh report from replica b"
    time.sleep(0.01)
took = time.time() - killed
print(f"failover with {rows:,} rows retained: replica b served its own report counting all {labels:,} labels "
      f"{took * 1000:.0f} ms after the analyst's SIGKILL")
for line in open(f"{work}/b.log"):
    if "analyst" in line and ("resumed" in line or "current" in line):
        fields = json.loads(line)["fields"]
        print("  b logged:", fields.get("message"), {k: v for k, v in fields.items() if k != "message"})
PY

# 4. (BENCH_FULL_READ=1) The analyst's own rate: the checkpoints deleted, replica b SIGKILLed and
#    restarted, so as analyst again it reads every row from the start. Timed by the analyst itself
#    (its log line when its comparison is current: from taking the lock), with nothing polling it.
if [ -n "${BENCH_FULL_READ:-}" ]; then
  psql -c "DELETE FROM gauntlet.checkpoints"
  kill -KILL "$pid_b"; wait "$pid_b" 2>/dev/null || true
  : >"$work/b.log"
  serve b $((port + 1)); pid_b=$last_pid
  # BENCH_PERF=FILE: a `perf record` of replica b while it reads (where the analyst's time goes).
  perf_pid=""
  [ -z "${BENCH_PERF:-}" ] || { perf record -F 999 -g -p "$pid_b" -o "$BENCH_PERF" 2>/dev/null & perf_pid=$!; }
  for _ in $(seq 36000); do
    grep -q 'its comparison is current' "$work/b.log" && break
    sleep 0.1
  done
  [ -z "$perf_pid" ] || { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
  python3 - "$work/b.log" "$rows" "$labels" <<'PY'
import json, sys
rows, labels = int(sys.argv[2]), int(sys.argv[3])
for line in open(sys.argv[1]):
    if "its comparison is current" in line:
        ms = json.loads(line)["fields"]["took_ms"]
        print(f"a new analyst without a checkpoint read all {rows:,} rows and joined {labels:,} labels in {ms / 1000:.1f} s: "
              f"{rows / ms * 1000:,.0f} rows/s, {labels / ms * 1000:,.0f} labels joined/s")
PY
fi
