# Sourced by the CI stages: start_gateway BINARY PORT CONFIG starts a gateway on 127.0.0.1:PORT with
# its outcome log and state in a fresh directory ($work), stops it and removes $work on exit, and
# returns once it is ready (or exits 1 with its log). Sets $gateway (pid), $work and $url.
# Readiness is asked with python3: a fresh CI machine may not have curl.

start_gateway() {
    local binary=$1 port=$2 config=$3
    url=http://127.0.0.1:$port
    work=$(mktemp -d)
    GAUNTLET_OUTCOMES__DIR=$work/outcomes GAUNTLET_STATE_DIR=$work/state \
        "$binary" serve --config "$config" --listen "127.0.0.1:$port" --grpc-listen "" >"$work/gateway.log" 2>&1 &
    gateway=$!
    trap stop_gateway EXIT
    for _ in $(seq 1 120); do
        gateway_ready && return 0
        if ! kill -0 "$gateway" 2>/dev/null; then
            echo "the gateway exited during startup:" >&2
            cat "$work/gateway.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    gateway_ready || { echo "the gateway never became ready:" >&2; cat "$work/gateway.log" >&2; exit 1; }
}

gateway_ready() {
    python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url/v2/health/ready" 2>/dev/null
}

stop_gateway() {
    kill -TERM "$gateway" 2>/dev/null || true
    wait "$gateway" 2>/dev/null || true
    rm -rf "$work"
}
