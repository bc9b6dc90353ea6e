#!/usr/bin/env bash
# What a complete shadow record costs in CPU time where it matters, at load (issue 33's records/s):
#
#   benches/shadow-cost.sh [rounds=3] [seconds=10]
#
# `shadow_cpu_budget` caps the shadow threads' CPU time, so the complete records a gateway keeps per
# second are the budget over the CPU time a record takes on them, at that load, on those cores:
# with the request threads' caches, preemption and cross-core reads, which callgrind's instruction
# counts (`record.sh`) do not see. Each round starts a fresh gateway (champion 1, challengers 2 and 3
# at 100% sampling, the default budget), warms it up for a second, then sends BENCH_RATE req/s
# (default 10000, open loop, `gauntlet loadtest`) for `seconds`, and reads from /proc, per thread
# name, the CPU time used (schedstat, nanoseconds), context switches and page faults in that time.
# Printed per round: complete records/s, the shadow threads' share of a core, their microseconds
# per complete record, involuntary switches and minor faults a second, the champion's p99.
# BENCH_BASELINE=path alternates another build, round by round, and prints the median ratio of
# records/s. BENCH_LOG_INPUTS=none|hash|full (default full). BENCH_PERF=dir: `perf record -e
# cpu-clock -g` over each gateway's first round, for `perf report --comm shadow`.
# Traffic goes to 127.0.0.1 only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds="${1:-3}" seconds="${2:-10}"
cd "$root"
rate="${BENCH_RATE:-10000}"
source benches/gateways.sh

mkdir -p "$work/models/breast-cancer"
for v in 1 2 3; do ln -s "$root/models/breast-cancer/$v" "$work/models/breast-cancer/$v"; done
configs=(head)
[ -z "${BENCH_BASELINE:-}" ] || configs+=(base)
declare -A port=([head]=19211 [base]=19212)
declare -A binary=([head]="$gauntlet" [base]="${BENCH_BASELINE:-}")
for name in "${configs[@]}"; do
  {
    gateway_toml "$name" "$work/models"
    cat <<TOML
log_inputs = "${BENCH_LOG_INPUTS:-full}"
[models.breast-cancer]
champion = "1"
versions = ["1", "2", "3"]
challengers = ["2", "3"]
TOML
  } >"$work/$name.toml"
done

threads() { # pid -> "name cpu_ns involuntary minor_faults" per thread (stat's fields counted after its "(comm)")
  local t
  for t in /proc/"$1"/task/*; do
    printf '%s %s %s %s\n' "$(tr ' ' _ <"$t/comm")" "$(cut -d' ' -f1 "$t/schedstat")" \
      "$(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$t/status")" "$(sed 's/.*) //' "$t/stat" | cut -d' ' -f8)"
  done
}
complete() {
  curl -s "http://127.0.0.1:${port[$1]}/metrics" |
    awk '/^gauntlet_shadow_records_total\{model="breast-cancer",complete="true"\}/ {n = $2} END {printf "%d\n", n}'
}

for r in $(seq "$rounds"); do
  for name in "${configs[@]}"; do
    launch "$name" "${binary[$name]}"
    wait_ready "$name"
    "$gauntlet" loadtest --url "http://127.0.0.1:${port[$name]}" --model breast-cancer \
      --data models/breast-cancer/holdout.csv --rate "$rate" --duration 1s --quiet >/dev/null
    threads "${pid[$name]}" >"$work/before"
    before=$(complete "$name")
    perf_pid=""
    if [ -n "${BENCH_PERF:-}" ] && [ "$r" = 1 ]; then
      mkdir -p "$BENCH_PERF"
      perf record -q -e cpu-clock -F 2000 --call-graph dwarf,16384 -p "${pid[$name]}" -o "$BENCH_PERF/$name.data" -- sleep "$seconds" 2>/dev/null &
      perf_pid=$!
    fi
    "$gauntlet" loadtest --url "http://127.0.0.1:${port[$name]}" --model breast-cancer \
      --data models/breast-cancer/holdout.csv --rate "$rate" --duration "${seconds}s" --quiet --json >"$work/load.json"
    [ -z "$perf_pid" ] || wait "$perf_pid" || true
    threads "${pid[$name]}" >"$work/after"
    after=$(complete "$name")
    stop "$name"
    python3 - "$work" "$name" "$r" "$seconds" "$before" "$after" <<'PY' >>"$work/rounds.tsv"
import collections, json, sys
work, name, r, seconds, before, after = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def read(path):
    by = collections.defaultdict(lambda: [0, 0, 0])
    for line in open(path):
        comm, *values = line.split()
        for i, v in enumerate(values):
            by[comm][i] += int(v)
    return by
b, a = read(f"{work}/before"), read(f"{work}/after")
shadow = [a["shadow"][i] - b["shadow"][i] for i in range(3)]
records = after - before
load = json.load(open(f"{work}/load.json"))
us = shadow[0] / 1e3 / records if records else float("nan")
print(name, r, records / seconds, shadow[0] / 1e9 / seconds, us, shadow[1] / seconds, shadow[2] / seconds, load["latency_ms"]["p99"], load["errors"])
PY
  done
done

python3 - "$work/rounds.tsv" "${configs[@]}" <<'PY'
import collections, statistics, sys
path, configs = sys.argv[1], sys.argv[2:]
rows = collections.defaultdict(dict)
print(f"{'build':<6}{'round':>6}{'records/s':>11}{'shadow cores':>14}{'us/record':>11}{'preempted/s':>13}{'faults/s':>10}{'p99 ms':>9}{'errors':>8}")
for line in open(path):
    name, r, rps, cores, us, invol, faults, p99, errors = line.split()
    rows[name][int(r)] = float(rps)
    print(f"{name:<6}{r:>6}{float(rps):>11.0f}{float(cores):>14.3f}{float(us):>11.2f}{float(invol):>13.0f}{float(faults):>10.0f}{float(p99):>9.3f}{errors:>8}")
if "base" in rows:
    ratios = [rows["head"][r] / rows["base"][r] for r in rows["head"] if rows["base"].get(r)]
    print(f"records/s against the baseline, median over rounds: {statistics.median(ratios):.2f}x "
          f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
PY
