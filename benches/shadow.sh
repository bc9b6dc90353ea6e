#!/usr/bin/env bash
# Shadow overhead on the champion, measured in one invocation:
#   A  champion only             B  two challengers (2, 3) at 100% sampling
#   C  one very slow challenger (tests/fixtures/slow: ~15-25 ms a row) at 100% sampling
#
#   benches/shadow.sh [rounds=3] [seconds=10]
#
# 1. A's maximum throughput (closed loop, 32 in flight).  2. A, B, C alternating, open loop at half
# that rate (latency from the scheduled send time). Each configuration's latencies are pooled over
# its rounds (the histograms `loadtest --histogram` writes, added up) for p50 and p99: a p99 over a
# few seconds rests on a few stalls of a shared machine, a pooled one on all of them. Also printed:
# the median over rounds of each round's p99 ratio to A's ("paired"), every round's p99, and the
# shadow coverage at that rate (the share of shadowed requests whose challengers all finished:
# `shadow_cpu_budget` caps it). 3. Saturation (closed loop): champion throughput and shadow coverage.
# Traffic goes to 127.0.0.1 only. BENCH_LOG_INPUTS=none|hash|full
# (default full) sets what the outcome log keeps of each input. BENCH_RATE=N: open loop at N req/s
# instead of half the maximum (to compare builds at one rate). BENCH_CPU_BUDGET=cores sets
# shadow_cpu_budget (default: the gateway's).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds="${1:-3}" seconds="${2:-10}"
cd "$root"
gauntlet="${BENCH_GAUNTLET:-target/release/gauntlet}"
[ -n "${BENCH_GAUNTLET:-}" ] || cargo build --release --quiet --bin gauntlet

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/models/breast-cancer"
for v in 1 2 3; do ln -s "$root/models/breast-cancer/$v" "$work/models/breast-cancer/$v"; done
ln -s "$root/tests/fixtures/slow/breast-cancer/9" "$work/models/breast-cancer/9"

start() { # name port challengers
  cat >"$work/$1.toml" <<TOML
listen = "127.0.0.1:$2"
models_dir = "$work/models"
log_level = "warn"
shadow_deadline_ms = 250
${BENCH_CPU_BUDGET:+shadow_cpu_budget = $BENCH_CPU_BUDGET}
[outcomes]
dir = "$work/outcomes-$1"
log_inputs = "${BENCH_LOG_INPUTS:-full}"
[models.breast-cancer]
champion = "1"
versions = ["1", "2", "3", "9"]
challengers = $3
TOML
  "$gauntlet" serve --config "$work/$1.toml" 2>"$work/$1.log" & pids+=($!)
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$2/v2/health/ready" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "gateway $1 did not start:" >&2; cat "$work/$1.log" >&2; exit 1
}
start A 19201 '[]'
start B 19202 '["2", "3"]'
start C 19203 '["9"]'
port() { case $1 in A) echo 19201;; B) echo 19202;; C) echo 19203;; esac; }

load() { # name extra-args... -> JSON summary
  local name=$1; shift
  "$gauntlet" loadtest --url "http://127.0.0.1:$(port "$name")" --model breast-cancer \
    --data models/breast-cancer/holdout.csv --quiet --json "$@"
}
records() { # name -> "complete total"
  curl -s "http://127.0.0.1:$(port "$1")/metrics" | awk '
    /^gauntlet_shadow_records_total\{model="breast-cancer",complete="true"\}/ {c=$2}
    /^gauntlet_shadow_records_total\{model="breast-cancer",complete="false"\}/ {f=$2}
    END {printf "%d %d\n", c, c+f}'
}

load A --concurrency 32 --duration 3s >/dev/null # warm up
max=$(load A --concurrency 32 --duration "${seconds}s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rps"])')
rate=${BENCH_RATE:-$(python3 -c "print(round($max / 2))")}
echo "champion-only maximum: $(printf %.0f "$max") req/s; fixed rate: $rate req/s (half, unless BENCH_RATE)" >&2

: >"$work/rate.tsv"
for r in $(seq "$rounds"); do
  for cfg in A B C; do
    before=$(records "$cfg")
    load "$cfg" --rate "$rate" --duration "${seconds}s" --histogram "$work/h-$cfg-$r.csv" |
      python3 -c "import json,sys; s=json.load(sys.stdin); l=s['latency_ms']; print('$cfg', s['rps'], l['p50'], l['p99'], s['errors'], end=' ')" >>"$work/rate.tsv"
    echo "$before $(records "$cfg")" >>"$work/rate.tsv"
  done
done
: >"$work/saturation.tsv"
for cfg in A B C; do
  before=$(records "$cfg")
  rps=$(load "$cfg" --concurrency 32 --duration "${seconds}s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rps"])')
  after=$(records "$cfg")
  echo "$cfg $rps $before $after" >>"$work/saturation.tsv"
done

python3 - "$work" "$rate" "$seconds" "$rounds" <<'PY'
import collections, statistics, sys
work = sys.argv[1]
names = {"A": "champion only", "B": "2 challengers, 100%", "C": "slow challenger, 100%"}
rows, pooled = {}, {}
for line in open(f"{work}/rate.tsv"):
    name, rps, p50, p99, errors, c0, t0, c1, t1 = line.split()
    rows.setdefault(name, []).append((float(rps), float(p50), float(p99), int(errors), int(c1) - int(c0), int(t1) - int(t0)))
for name in "ABC":
    buckets = pooled.setdefault(name, collections.Counter())
    for r in range(1, int(sys.argv[4]) + 1):
        for line in list(open(f"{work}/h-{name}-{r}.csv"))[1:]:
            us, count = line.split(",")
            buckets[int(us)] += int(count)

def quantile(buckets, q):
    total, seen = sum(buckets.values()), 0
    for us in sorted(buckets):
        seen += buckets[us]
        if seen >= q * total:
            return us / 1000

print(f"open loop at {sys.argv[2]} req/s, {sys.argv[3]} s x {sys.argv[4]} rounds; p50 and p99 pooled over rounds, ms")
print(f"{'config':<24}{'req/s':>8}{'p50':>8}{'p99':>8}{'errors':>8}{'p99 vs A':>10}{'paired':>10}{'coverage':>10}")
base = quantile(pooled["A"], 0.99)
for name in "ABC":
    r = rows[name]
    p99 = quantile(pooled[name], 0.99)
    # Paired: the median over rounds of this p99 / A's p99 in the same round (runs minutes apart see
    # a different machine here; runs seconds apart less so).
    paired = statistics.median(x[2] / a[2] for x, a in zip(r, rows["A"])) - 1
    complete, total = sum(x[4] for x in r), sum(x[5] for x in r)
    coverage = f"{complete / total:.1%}" if total else "-"
    print(f"{names[name]:<24}{statistics.median(x[0] for x in r):>8.0f}{quantile(pooled[name], 0.5):>8.3f}{p99:>8.3f}{sum(x[3] for x in r):>8}{p99 / base - 1:>+10.1%}{paired:>+10.1%}{coverage:>10}")
print("per round, p99 ms (A B C): " + "; ".join(" ".join(f"{rows[n][i][2]:.2f}" for n in "ABC") for i in range(len(rows["A"]))))
print()
print("saturation (closed loop, 32 in flight)")
print(f"{'config':<24}{'req/s':>8}{'vs A':>8}{'coverage':>10}")
sat = {}
for line in open(f"{work}/saturation.tsv"):
    name, rps, c0, t0, c1, t1 = line.split()
    sat[name] = (float(rps), int(c1) - int(c0), int(t1) - int(t0))
for name in "ABC":
    rps, complete, total = sat[name]
    coverage = f"{complete / total:.1%}" if total else "-"
    print(f"{names[name]:<24}{rps:>8.0f}{rps / sat['A'][0]:>8.0%}{coverage:>10}")
PY
