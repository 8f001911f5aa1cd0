#!/usr/bin/env bash
# Generates the Python code and mypy stubs for protos/voxwire/v1 into OUT/voxwire/v1.
set -euo pipefail
out=${1:?usage: gen-proto.sh OUT_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/.venv/bin"
mkdir -p "$out/voxwire/v1"
rm -f "$out"/voxwire/v1/*_pb2*.py "$out"/voxwire/v1/*_pb2*.pyi
cd "$here"
PATH="$bin:$PATH" "$bin/python" -m grpc_tools.protoc -I protos \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  protos/voxwire/v1/*.proto >/dev/null
