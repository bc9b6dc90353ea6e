#!/usr/bin/env bash
# Makes (once) a Python environment the tests and the training script use, and prints its
# interpreter's path. Needs only python3 with pip and access to PyPI.
#   scripts/python-env.sh          target/python: models/requirements.txt + tests/python/requirements.txt
#   scripts/python-env.sh kserve   target/python-kserve: tests/python/kserve-requirements.txt
#   scripts/python-env.sh moto     target/python-moto: tests/python/moto-requirements.txt (moto_server)
#   scripts/python-env.sh mlflow   target/python-mlflow: models/requirements.txt + tests/python/mlflow-requirements.txt
#                                  (mlflow server, models/mlflow_register.py)
#   scripts/python-env.sh nannyml  target/python-nannyml: tests/python/nannyml-requirements.txt (CBPE's reference)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
case "${1:-}" in
  "") venv="$root/target/python"; requirements=("$root/models/requirements.txt" "$root/tests/python/requirements.txt") ;;
  kserve) venv="$root/target/python-kserve"; requirements=("$root/tests/python/kserve-requirements.txt") ;;
  moto) venv="$root/target/python-moto"; requirements=("$root/tests/python/moto-requirements.txt") ;;
  mlflow) venv="$root/target/python-mlflow"; requirements=("$root/models/requirements.txt" "$root/tests/python/mlflow-requirements.txt") ;;
  nannyml) venv="$root/target/python-nannyml"; requirements=("$root/tests/python/nannyml-requirements.txt") ;;
  *) echo "usage: $0 [kserve|moto|mlflow|nannyml]" >&2; exit 2 ;;
esac
stamp="$venv/.requirements"
# Tests running at once ask for the same environment: one makes it, the others wait for it.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
wanted="$(cat "${requirements[@]}")"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]/#/-r}" >&2
  printf '%s' "$wanted" > "$stamp"
fi
echo "$venv/bin/python"
