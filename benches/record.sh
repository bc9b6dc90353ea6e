#!/usr/bin/env bash
# What one complete shadow record costs the whole process, by callgrind (issue 33's figure):
#
#   benches/record.sh [seconds=20] [rate=30]
#
# Serves the breast-cancer champion (1) twice under valgrind, each time warmed up, zeroed, then sent
# `rate` req/s for `seconds` with `gauntlet loadtest`: once champion only, once with challengers 2
# and 3 at full coverage (`shadow_cpu_budget = 2.0`). The counters are dumped only once every
# request's record is counted (`gauntlet_shadow_records_total`, polled), so no record is left half
# done. Printed: instructions per request of each, summed over every thread of the process, and
# their difference per complete record; then, by thread name, where the difference goes.
# BENCH_SET="key=value ..." adds settings to both (e.g. shadow_deadline_ms=1000: the batch a quiet
# gateway's challenger waits for grows with it). BENCH_GAUNTLET=path measures another build; BENCH_CALLGRIND_KEEP=dir keeps the profiles there
# (for callgrind_annotate). Needs valgrind. Traffic goes to 127.0.0.1 only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
seconds="${1:-20}" rate="${2:-30}"
gauntlet="${BENCH_GAUNTLET:-target/release/gauntlet}"
extra=()
for setting in ${BENCH_SET:-}; do extra+=(--set "$setting"); done
[ -n "${BENCH_GAUNTLET:-}" ] || cargo build --release --quiet --bin gauntlet
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 1; }

work="$(mktemp -d)"
port="${BENCH_PORT:-19170}"
pid=""
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

complete() { # -> the complete records the gateway has counted
  curl -s "http://127.0.0.1:$port/metrics" |
    awk '/^gauntlet_shadow_records_total\{model="breast-cancer",complete="true"\}/ {n = $2} END {printf "%d\n", n}'
}
lines() { # dir -> the outcome lines written so far (read from disk: polling /metrics would be counted)
  { cat "$1"/outcomes/*.jsonl 2>/dev/null || true; } | wc -l
}
load() { # rate seconds -> requests sent
  "$gauntlet" loadtest --url "http://127.0.0.1:$port" --model breast-cancer --data models/breast-cancer/holdout.csv \
    --rate "$1" --duration "$2s" --quiet --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"])'
}

measure() { # name challengers
  local name=$1 out="$work/$1"
  mkdir -p "$out"
  valgrind --tool=callgrind --separate-threads=yes --dump-instr=no --callgrind-out-file="$out/cg.out" \
    "$gauntlet" serve --config gauntlet.toml --listen "127.0.0.1:$port" --grpc-listen "" --set log_level=warn \
    --set "models.breast-cancer.challengers=$2" --set shadow_cpu_budget=2.0 \
    --set "outcomes.dir=$out/outcomes" --set "state_dir=$out/state" "${extra[@]}" 2>"$out/gateway.log" &
  pid=$!
  for _ in $(seq 1200); do
    curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$out/gateway.log" >&2; exit 1; }
    sleep 0.1
  done
  local warm before sent
  warm=$(load "$rate" 5)
  # Wait for the warm-up's lines (a shadowed request's line waits for its challengers, then for
  # the writer's flush), so that the counted window holds the measured requests' work only.
  # A champion-only gateway writes no lines: nothing to wait for.
  local expect=1
  [ "$2" != '[]' ] || expect=0
  for _ in $(seq 600); do [ "$(lines "$out")" -ge $((expect * warm)) ] && break; sleep 0.1; done
  before=$(lines "$out")
  local complete_before
  complete_before=$(complete)
  callgrind_control -z "$pid" >/dev/null 2>&1
  sent=$(load "$rate" "$seconds")
  for _ in $(seq 600); do [ "$(lines "$out")" -ge $((before + expect * sent)) ] && break; sleep 0.1; done
  callgrind_control -d "$pid" >/dev/null 2>&1
  echo "$sent $(($(lines "$out") - before)) $(($(complete) - complete_before))" >"$out/requests"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  [ -z "${BENCH_CALLGRIND_KEEP:-}" ] || { mkdir -p "$BENCH_CALLGRIND_KEEP/$name"; cp "$out"/cg.out.1-* "$BENCH_CALLGRIND_KEEP/$name/"; }
}

measure champion '[]'
measure shadow '["2", "3"]'

python3 - "$work" <<'EOF'
import collections, glob, re, sys
work = sys.argv[1]

def threads(name):
    """Instructions since the zeroing, by thread name (the dump after `callgrind_control -z`)."""
    by = collections.Counter()
    for path in glob.glob(f"{work}/{name}/cg.out.1-*"):
        text = open(path, errors="replace").read()
        total = next(int(l.split()[1]) for l in text.splitlines() if l.startswith(("summary:", "totals:")))
        # callgrind names a thread's file by number only: what it ran tells which it is.
        kinds = [("shadow", "gauntlet::shadow::thread"), ("join", "JoinThread as gauntlet::background::Work"),
                 ("drift", "drift::Monitor as gauntlet::background::Work"), ("writer", "outcomes::writer::Log::flush"),
                 ("workers", "multi_thread::worker::run")]
        kind = next((k for k, mark in kinds if mark in text), "other")
        by[kind] += total
    return by

champion, shadow = threads("champion"), threads("shadow")
sent_c, _, _ = map(int, open(f"{work}/champion/requests").read().split())
sent_s, lines_s, rec_s = map(int, open(f"{work}/shadow/requests").read().split())
assert lines_s >= sent_s, "a request's line did not arrive"
per_c = sum(champion.values()) / sent_c
per_s = sum(shadow.values()) / sent_s
print(f"champion only: {per_c:,.0f} instructions per request ({sent_c} requests)")
print(f"two challengers: {per_s:,.0f} instructions per request ({sent_s} requests, {rec_s} complete records)")
print(f"per complete record: {per_s - per_c:,.0f} more")
for kind in sorted(set(champion) | set(shadow)):
    print(f"  {kind:<10}{shadow[kind] / sent_s - champion[kind] / sent_c:>10,.0f}")
EOF
