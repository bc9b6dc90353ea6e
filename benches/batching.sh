#!/usr/bin/env bash
# Dynamic batching of a heavy model (issue 34), measured in one invocation with wrk, one-row requests:
#   U  the heavy version 9 as champion, [models.breast-cancer.batching] max_batch = 1 (unbatched)
#   B  the same with the default batching (max_batch 32, no added delay)
#   T  the tiny version 1 as champion, unbatched and batched (it runs inline: batching must not touch it)
# then the heavy version as a challenger of version 1 at BENCH_SHADOW_RATE (2000) req/s open loop with the
# default shadow_cpu_budget: complete paired records per second.
#
#   benches/batching.sh [rounds=3] [seconds=10]
#
# Each round starts both gateways fresh and measures them alternately at every concurrency (1, 16, 64
# in flight, `wrk -t1 -cN`). Printed per configuration and concurrency: the median req/s, p50 and p99
# over rounds, the ratio of the medians B/U, and B's rows per model call (gauntlet_batch_rows). The
# heavy version comes from `models/train.py --heavy target/heavy-models` (made here when missing).
# Traffic goes to 127.0.0.1 only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds="${1:-3}" seconds="${2:-10}"
cd "$root"
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
[ -f target/heavy-models/breast-cancer/9/model.onnx ] ||
  "$(scripts/python-env.sh)" models/train.py --heavy target/heavy-models >&2

source benches/body.sh
source benches/gateways.sh
write_body "$work"

declare -A port=([U]=19301 [B]=19302 [TU]=19303 [TB]=19304 [S]=19305)
declare -A champion=([U]=9 [B]=9 [TU]=1 [TB]=1 [S]=1)
declare -A max_batch=([U]=1 [B]=32 [TU]=1 [TB]=32 [S]=32)
declare -A challengers=([U]='[]' [B]='[]' [TU]='[]' [TB]='[]' [S]='["9"]')

start() { # name...: a fresh gateway for each, returns when all are ready
  local name
  for name in "$@"; do
    {
      gateway_toml "$name" "$root/target/heavy-models"
      cat <<TOML
[models.breast-cancer]
champion = "${champion[$name]}"
challengers = ${challengers[$name]}
[models.breast-cancer.batching]
max_batch = ${max_batch[$name]}
TOML
    } >"$work/$name.toml"
    launch "$name" "$gauntlet"
  done
  wait_ready "$@"
}
batches() { # name -> the champion path's gauntlet_batch_rows buckets, "le=count ..."
  curl -s "http://127.0.0.1:${port[$1]}/metrics" | awk -v v="${champion[$1]}" '
    $0 ~ "^gauntlet_batch_rows_bucket\\{" && $0 ~ "version=\"" v "\"" && $0 ~ "path=\"champion\"" {
      match($0, /le="[^"]*"/); printf "%s=%d ", substr($0, RSTART + 4, RLENGTH - 5), $2 }
    END { print "" }'
}
measure() { # name connections -> "rps p50_ms p99_ms"
  wrk -t1 -c"$2" -d"${seconds}s" --latency -s "$work/body.lua" \
    "http://127.0.0.1:${port[$1]}/v2/models/breast-cancer/infer" | python3 -c '
import re, sys
text = sys.stdin.read()
unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
def pct(p):
    value, u = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
    return float(value) * unit[u]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if errors: sys.exit(f"wrk saw {errors.group(1)} failed responses")
print(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1), pct(50), pct(99))'
}

: >"$work/closed.tsv"
for r in $(seq "$rounds"); do
  start U B TU TB
  for c in 1 16 64; do
    for cfg in U B TU TB; do wrk -t1 -c"$c" -d1s -s "$work/body.lua" "http://127.0.0.1:${port[$cfg]}/v2/models/breast-cancer/infer" >/dev/null; done
    order=(U B TU TB); [ $((r % 2)) -eq 0 ] && order=(B U TB TU)
    for cfg in "${order[@]}"; do
      before=$(batches "$cfg")
      echo "$cfg $c $r $(measure "$cfg" "$c") | $before | $(batches "$cfg")" >>"$work/closed.tsv"
    done
  done
  stop U B TU TB
done

shadow_rate="${BENCH_SHADOW_RATE:-2000}"
start S
"$gauntlet" loadtest --url "http://127.0.0.1:${port[S]}" --model breast-cancer --data models/breast-cancer/holdout.csv \
  --quiet --rate "$shadow_rate" --duration 2s >/dev/null
records() {
  curl -s "http://127.0.0.1:${port[S]}/metrics" | awk '
    /^gauntlet_shadow_records_total\{model="breast-cancer",complete="true"\}/ {c=$2}
    /^gauntlet_shadow_records_total\{model="breast-cancer",complete="false"\}/ {f=$2}
    /^gauntlet_batch_rows_sum\{model="breast-cancer",version="9",path="shadow"\}/ {rows=$2}
    /^gauntlet_batch_rows_count\{model="breast-cancer",version="9",path="shadow"\}/ {calls=$2}
    END {printf "%d %d %d %d\n", c, c+f, rows, calls}'
}
before=$(records)
"$gauntlet" loadtest --url "http://127.0.0.1:${port[S]}" --model breast-cancer --data models/breast-cancer/holdout.csv \
  --quiet --rate "$shadow_rate" --duration "${seconds}s" >/dev/null
after=$(records)
stop S

python3 - "$work" "$seconds" "$shadow_rate" "$before" "$after" <<'PY'
import collections, statistics, sys
work, seconds, shadow_rate = sys.argv[1], float(sys.argv[2]), sys.argv[3]
rows = collections.defaultdict(list)
hist = collections.defaultdict(collections.Counter)
for line in open(f"{work}/closed.tsv"):
    head, before, after = line.split("|")
    name, c, r, rps, p50, p99 = head.split()
    rows[(name, int(c))].append((float(rps), float(p50), float(p99)))
    parse = lambda s: {k: int(v) for k, v in (x.split("=") for x in s.split())}
    b, a = parse(before), parse(after)
    for le in a:
        hist[(name, int(c))][le] += a[le] - b.get(le, 0)
names = {"U": "heavy, unbatched", "B": "heavy, batched", "TU": "tiny v1, unbatched", "TB": "tiny v1, batched"}
def med(name, c, i): return statistics.median(x[i] for x in rows[(name, c)])
print("wrk -t1, one-row JSON requests; medians over rounds")
print(f"{'config':<22}{'in flight':>10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs unbatched':>14}   rows per call (share of calls)")
for name in ["U", "B", "TU", "TB"]:
    for c in (1, 16, 64):
        if (name, c) not in rows: continue
        base = {"B": "U", "TB": "TU"}.get(name)
        ratio = f"{med(name, c, 0) / med(base, c, 0):.2f}x" if base else ""
        h = hist[(name, c)]
        total = h.get("+Inf", 0)
        dist, prev = [], 0
        for le in ["1", "2", "4", "8", "16", "32", "64"]:
            n = h.get(le, 0) - prev; prev = h.get(le, 0)
            if total and n: dist.append(f"<={le}: {n / total:.0%}")
        print(f"{names[name]:<22}{c:>10}{med(name, c, 0):>10.0f}{med(name, c, 1):>9.2f}{med(name, c, 2):>9.2f}{ratio:>14}   {' '.join(dist)}")
c0, t0, r0, k0 = map(int, sys.argv[4].split()); c1, t1, r1, k1 = map(int, sys.argv[5].split())
print()
print(f"heavy challenger of v1 at {shadow_rate} req/s, default shadow_cpu_budget: "
      f"{(c1 - c0) / seconds:.0f} complete records/s, coverage {(c1 - c0) / max(t1 - t0, 1):.1%}, "
      f"{(r1 - r0) / max(k1 - k0, 1):.1f} rows per challenger call")
PY
