# Sourced by the benches: `write_bodies DIR ROWS` writes the first ROWS breast-cancer holdout rows
# (cycled if there are fewer) as `DIR/body.json`, a JSON OIP request (the common client shape), as
# `DIR/body.bin`, the same rows as a gRPC-framed ModelInfer message with raw_input_contents (as
# tritonclient sends it; written here by hand: the fields are few, and the benches need no protobuf
# package), and `DIR/body.lua`, which has wrk POST the JSON. `write_body DIR`: one row.
write_bodies() {
  python3 - "$1" "$2" <<'PY'
import csv, json, struct, sys
work, batch = sys.argv[1], int(sys.argv[2])
rows = [[float(v) for v in r[:-1]] for i, r in enumerate(csv.reader(open("models/breast-cancer/holdout.csv"))) if i >= 1]
rows = (rows * (batch // len(rows) + 1))[:batch]
flat = [v for row in rows for v in row]
json.dump({"inputs": [{"name": "input", "shape": [batch, 30], "datatype": "FP32", "data": flat}]}, open(f"{work}/body.json", "w"))
def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out
def field(number, payload):  # length-delimited
    return varint(number << 3 | 2) + varint(len(payload)) + payload
tensor = field(1, b"input") + field(2, b"FP32") + field(3, varint(batch) + varint(30))
message = field(1, b"breast-cancer") + field(5, tensor) + field(7, struct.pack(f"<{len(flat)}f", *flat))
open(f"{work}/body.bin", "wb").write(b"\0" + struct.pack(">I", len(message)) + message)
PY
  cat >"$1/body.lua" <<LUA
wrk.method = "POST"
local f = io.open("$1/body.json", "r"); wrk.body = f:read("*a"); f:close()
LUA
}
write_body() { write_bodies "$1" 1; }
