#!/usr/bin/env bash
# Generates Python message classes and gRPC stubs for kvpark into a directory (default: ./kvpark_stubs)
# with Debian's protoc and gRPC Python plugin (health checking stubs come with the grpcio-health-checking
# package where needed; generating them here would shadow the grpc package):
#   apt-get install protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$PWD/kvpark_stubs}"
mkdir -p "$out"
protoc -I "$root/proto" \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin \
  "$root"/proto/kvpark/v1/*.proto
echo "$out"
