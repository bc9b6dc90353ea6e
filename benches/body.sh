# Sourced by the wrk benches: writes `$1/body.json`, one breast-cancer holdout row as a JSON OIP
# request (the common client shape), and `$1/body.lua`, which has wrk POST it.
write_body() {
  python3 - "$1/body.json" <<'PY'
import csv, json, sys
row = next(r for i, r in enumerate(csv.reader(open("models/breast-cancer/holdout.csv"))) if i == 1)
body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [float(v) for v in row[:-1]]}]}
open(sys.argv[1], "w").write(json.dumps(body))
PY
  cat >"$1/body.lua" <<LUA
wrk.method = "POST"
local f = io.open("$1/body.json", "r"); wrk.body = f:read("*a"); f:close()
LUA
}
