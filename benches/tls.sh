#!/usr/bin/env bash
# TLS beside plain text, in one run: the release gateway (breast-cancer champion only) served plain
# and with [tls] at once on other ports, and load generators that are not ours alternated between
# them for `rounds` rounds: wrk (REST, 16 connections, one holdout row as JSON) and h2load (gRPC
# ModelInfer with raw contents, 4 connections × 4 streams). Each gRPC run's answers are checked
# against the gateway's own count of successful requests (h2load sees HTTP status, not grpc-status).
#
#   benches/tls.sh [seconds=5] [rounds=3]
#
# Needs wrk, h2load (`apt-get install wrk nghttp2-client`), openssl, and the Python environment of
# the tests (target/python, made by scripts/python-env.sh) for the protobuf body. 127.0.0.1 only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
seconds="${1:-5}"
rounds="${2:-3}"
gauntlet="${BENCH_GAUNTLET:-target/release/gauntlet}"
[ -n "${BENCH_GAUNTLET:-}" ] || cargo build --release --quiet --bin gauntlet
python="${BENCH_PYTHON:-target/python/bin/python}"
work="$(mktemp -d)"
port="${BENCH_PORT:-19400}"
pid=""
pids=()
. benches/postgres.sh
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; cleanup' EXIT

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
# serve NAME REST GRPC [--set ...]
serve() {
  local name="$1" rest="$2" grpc="$3"
  shift 3
  "$gauntlet" serve --config gauntlet.toml --listen "127.0.0.1:$rest" --grpc-listen "127.0.0.1:$grpc" --set log_level=warn \
    --set 'models.breast-cancer.challengers=[]' --set "outcomes.dir=$work/$name/outcomes" --set "state_dir=$work/$name/state" \
    "$@" 2>"$work/$name.log" &
  pids+=("$!")
}
serve plain "$port" $((port + 1))
serve tls $((port + 2)) $((port + 3)) --set "tls.cert_file=$work/cert.pem" --set "tls.key_file=$work/key.pem"
wait_ready "$port" "${pids[0]}" "$work/plain.log"
for _ in $(seq 600); do
  curl -skf "https://127.0.0.1:$((port + 2))/v2/health/ready" >/dev/null 2>&1 && break
  sleep 0.1
done

. benches/body.sh
write_body "$work"
"$python" - "$work/grpc.bin" <<'PY'
import csv, sys
import numpy as np
from tritonclient.grpc import service_pb2
row = next(r for i, r in enumerate(csv.reader(open("models/breast-cancer/holdout.csv"))) if i == 1)
request = service_pb2.ModelInferRequest(model_name="breast-cancer")
tensor = request.inputs.add(name="input", datatype="FP32")
tensor.shape.extend([1, 30])
request.raw_input_contents.append(np.asarray([float(v) for v in row[:-1]], dtype=np.float32).tobytes())
message = request.SerializeToString()
open(sys.argv[1], "wb").write(b"\0" + len(message).to_bytes(4, "big") + message)
PY

ok_count() { # REST port (scheme)
  curl -sk "$2://127.0.0.1:$1/metrics" | awk '/^gauntlet_inference_requests_total\{.*outcome="ok"/ { s += $NF } END { print s + 0 }'
}
rest_run() { # URL
  wrk -t1 -c16 -d"${seconds}s" -s "$work/body.lua" "$1/v2/models/breast-cancer/infer" | awk '/Requests\/sec/ {print $2}'
}
grpc_run() { # URL REST_PORT SCHEME: req/s, and the gateway's successes against h2load's
  local before after
  before=$(ok_count "$2" "$3")
  out=$(h2load -D "$seconds" -c4 -m4 -t1 -d "$work/grpc.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    "$1/inference.GRPCInferenceService/ModelInfer")
  after=$(ok_count "$2" "$3")
  echo "$(echo "$out" | awk '/^finished in/ {print $4}') ($(echo "$out" | awk '/^requests:/ {print $8}') succeeded, $((${after%.*} - ${before%.*})) ok by the gateway)"
}
for round in $(seq "$rounds"); do
  echo "round $round: REST plain $(rest_run "http://127.0.0.1:$port") req/s, TLS $(rest_run "https://127.0.0.1:$((port + 2))") req/s"
  echo "round $round: gRPC plain $(grpc_run "http://127.0.0.1:$((port + 1))" "$port" http) req/s, TLS $(grpc_run "https://127.0.0.1:$((port + 3))" $((port + 2)) https) req/s"
done
