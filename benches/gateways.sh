# Sourced, from the repository's root, by the benches that run several named gateways at once
# (shadow.sh, shadow-cost.sh, batching.sh). It sets `gauntlet` (BENCH_GAUNTLET, else the release
# build, built here), makes the scratch directory `$work` and the associative array `pid` (gateway
# name to process), and at exit stops every gateway still running and removes `$work`. The caller
# declares `port` (name to port); gateway NAME serves `$work/NAME.toml` (which the caller writes,
# starting with `gateway_toml`) and logs to `$work/NAME.log`.
gauntlet="${BENCH_GAUNTLET:-target/release/gauntlet}"
[ -n "${BENCH_GAUNTLET:-}" ] || cargo build --release --quiet --bin gauntlet
work="$(mktemp -d)"
declare -A pid
cleanup() { for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

gateway_toml() { # name models_dir [top-level line...]: the head of gateway NAME's configuration, through its
  # `[outcomes]` dir; the caller appends the rest of that table and the models
  local name=$1 models=$2
  shift 2
  printf '%s\n' "listen = \"127.0.0.1:${port[$name]}\"" 'grpc_listen = ""' "models_dir = \"$models\"" \
    'log_level = "warn"' "state_dir = \"$work/state-$name\"" "$@" '[outcomes]' "dir = \"$work/outcomes-$name\""
}
launch() { # name binary: serves the gateway in the background
  "$2" serve --config "$work/$1.toml" 2>"$work/$1.log" &
  pid[$1]=$!
}
wait_ready() { # name...: returns when every one answers ready; exits with its log if one does not in 30 s
  local name
  for name in "$@"; do
    for _ in $(seq 600); do curl -sf "http://127.0.0.1:${port[$name]}/v2/health/ready" >/dev/null 2>&1 && continue 2; sleep 0.05; done
    echo "gateway $name did not start:" >&2; cat "$work/$name.log" >&2; exit 1
  done
}
stop() { # name...: graceful stop; their outcome logs and state go with them (a bench writes gigabytes)
  local name
  for name in "$@"; do kill "${pid[$name]}" 2>/dev/null || true; done
  for name in "$@"; do wait "${pid[$name]}" 2>/dev/null || true; unset "pid[$name]"; rm -rf "$work/outcomes-$name" "$work/state-$name"; done
}
