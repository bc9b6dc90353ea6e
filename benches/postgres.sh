# Sourced by the benches: wait_ready waits for a gateway; start_postgres <dir> <port> starts a throwaway PostgreSQL (Debian's
# `postgresql`; initdb and pg_ctl as the `postgres` user when run as root) and sets POSTGRES_URL;
# stop_postgres <dir> stops it; `cleanup` (the benches' EXIT trap) stops the gateway `$pid`, the
# PostgreSQL under `$work/pg` if one was started, and removes `$work`.
# wait_ready PORT PID LOG: until the gateway PID answers ready on PORT (its LOG shown if it dies).
wait_ready() {
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$1/v2/health/ready" >/dev/null 2>&1 && return
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; exit 1; }
    sleep 0.1
  done
}
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
postgres_bin() { ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1; }
start_postgres() {
  local dir="$1" port="$2" bin
  bin="$(postgres_bin)"
  chmod 755 "$(dirname "$dir")"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync >/dev/null
  as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $dir" start >/dev/null
  POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
}
stop_postgres() {
  [ -d "$1/data" ] && as_postgres "$(postgres_bin)/pg_ctl" -D "$1/data" -m immediate stop >/dev/null 2>&1 || true
}
cleanup() {
  # The gateway may be gone already (a bench may have SIGKILLed it).
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  stop_postgres "$work/pg"
  rm -rf "$work"
}
