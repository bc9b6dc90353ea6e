#!/usr/bin/env bash
# Makes (once) the Python environment the tests and the training script use: target/python.
# Needs only python3 with pip and access to PyPI. Prints the interpreter's path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/python"
stamp="$venv/.requirements"
wanted="$(cat "$root/models/requirements.txt" "$root/tests/python/requirements.txt")"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$root/models/requirements.txt" -r "$root/tests/python/requirements.txt" >&2
  printf '%s' "$wanted" > "$stamp"
fi
echo "$venv/bin/python"
