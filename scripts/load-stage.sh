#!/usr/bin/env bash
# A CI load stage: start a gateway, replay labelled rows against it with their labels posted as
# feedback, fail on any error or missed objective, and check the comparison report has data.
#
#   scripts/load-stage.sh [path/to/gauntlet]        (default: target/release/gauntlet, built if missing)
#
# Environment (all optional): STAGE_MODEL (breast-cancer), STAGE_DATA (models/$STAGE_MODEL/holdout.csv),
# STAGE_RATE (200 req/s, open loop), STAGE_DURATION (20s), STAGE_MAX_P99_MS (250), STAGE_CONFIG
# (gauntlet.toml), STAGE_PORT (18000). Traffic goes to 127.0.0.1 only; the run is bounded by
# STAGE_DURATION. Exit status: 0 when every check passes.
set -euo pipefail
cd "$(dirname "$0")/.."

gauntlet=${1:-target/release/gauntlet}
model=${STAGE_MODEL:-breast-cancer}
data=${STAGE_DATA:-models/$model/holdout.csv}
rate=${STAGE_RATE:-200}
duration=${STAGE_DURATION:-20s}
max_p99=${STAGE_MAX_P99_MS:-250}
port=${STAGE_PORT:-18000}

if [[ ! -x $gauntlet ]]; then
    cargo build --release --locked
fi

source scripts/gateway.sh
start_gateway "$gauntlet" "$port" "${STAGE_CONFIG:-gauntlet.toml}"

echo "load stage: $rate req/s for $duration against $model, labels posted as feedback"
"$gauntlet" loadtest --url "$url" --model "$model" --data "$data" --rate "$rate" --duration "$duration" \
    --feedback --feedback-delay 500ms --max-error-rate 0 --max-p99-ms "$max_p99" --json --quiet >"$work/load.json"
python3 - "$work/load.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
print(f"load stage: {summary['requests']} requests, {summary['rps']:.0f} req/s, p99 {summary['latency_ms']['p99']:.2f} ms, "
      f"{summary['errors']} errors; labels {summary['feedback']}")
PY

"$gauntlet" report "$model" --url "$url" --json >"$work/report.json"
"$gauntlet" report "$model" --url "$url"
python3 - "$work/report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
problems = []
if report["labelled_records"] == 0:
    problems.append("no labelled record reached the comparison")
if not report["pairs"]:
    problems.append("the report compares no champion-challenger pair")
for pair in report["pairs"]:
    if pair["labelled_pairs"] == 0:
        problems.append(f"pair {pair['champion']} vs {pair['challenger']} has no labelled pair")
    if pair["coverage"] is None or pair["coverage"] < 0.9:
        problems.append(f"pair {pair['champion']} vs {pair['challenger']}: coverage {pair['coverage']}")
for problem in problems:
    print(f"load stage: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
echo "load stage: passed"
