#!/usr/bin/env bash
# Puts ONNX Runtime's shared library, from PyPI's onnxruntime wheel, at $1 (default
# target/onnxruntime/libonnxruntime.so.1.32.0) and prints the path. build.rs does the same on the
# first build; use this where builds cannot run pip (then set ORT_DYLIB_PATH or onnxruntime_library).
set -euo pipefail
version=1.32.0
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/target/onnxruntime/libonnxruntime.so.$version}"
if [ ! -f "$out" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: "onnxruntime==$version" -d "$tmp" >&2
  mkdir -p "$(dirname "$out")"
  python3 - "$tmp"/onnxruntime-*.whl "onnxruntime/capi/libonnxruntime.so.$version" "$out.partial" <<'PY'
import sys, zipfile
open(sys.argv[3], "wb").write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))
PY
  mv "$out.partial" "$out"
fi
echo "$out"
