#!/usr/bin/env bash
# Fuzzes the live demo gateway from its own OpenAPI document with schemathesis: every operation,
# examples, coverage and random cases; fails on any 5xx or any response the document does not
# allow (status, content type, body schema). Traffic to 127.0.0.1 only, bounded by example count.
#
#   scripts/api-fuzz.sh [path/to/gauntlet]      (default: target/debug/gauntlet)
set -euo pipefail
cd "$(dirname "$0")/.."
gauntlet=${1:-target/debug/gauntlet}
port=${FUZZ_PORT:-18001}
python=$(scripts/python-env.sh)

# The document declares bearer tokens, so schemathesis sends one: a real one (the admin token, with
# read and change; labels and inference answer loopback without one), or the scoped operations would
# answer 401 to every generated case and go unfuzzed.
token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
source scripts/gateway.sh
export GAUNTLET_ADMIN_TOKEN=$token
start_gateway "$gauntlet" "$port" gauntlet.toml

"$(dirname "$python")/st" run "$url/openapi.json" -H "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing --max-examples "${FUZZ_EXAMPLES:-25}" --seed 1 --no-color
if grep -q "panicked" "$work/gateway.log"; then
    echo "api fuzz: the gateway logged a panic" >&2
    grep -n "panicked" "$work/gateway.log" >&2
    exit 1
fi
