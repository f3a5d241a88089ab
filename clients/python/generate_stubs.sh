#!/usr/bin/env bash
# Generates the Python message classes (*_pb2.py), their type stubs (*_pb2.pyi) and the gRPC stubs
# (*_pb2_grpc.py) of the kvpark package from proto/, with Debian's protoc and gRPC Python plugin:
#   apt-get install protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
# (libprotobuf-dev carries the well-known types, google/protobuf/*.proto, under /usr/include).
# The output is committed under clients/python/src (the default OUT); the test suite regenerates it into
# a temporary directory and fails when the two differ. Run it again after changing a .proto file.
#
#   clients/python/generate_stubs.sh [OUT]
#
# OUT receives kvpark/v1/ (kvpark.v1) and kvpark/grpc_health/v1/ (grpc.health.v1). The health stubs are
# moved inside the kvpark package: generated at their proto path they would be a package named grpc,
# which shadows grpcio itself.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/clients/python/src}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

protoc -I "$root/proto" -I /usr/include \
  --python_out="$tmp" \
  --pyi_out="$tmp" \
  --grpc_python_out="$tmp" \
  --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin \
  "$root"/proto/kvpark/v1/*.proto "$root/proto/grpc/health/v1/health.proto"

# A proto file without services gets an empty *_pb2_grpc.py; it is left out.
for f in "$tmp"/kvpark/v1/*_pb2_grpc.py "$tmp"/grpc/health/v1/*_pb2_grpc.py; do
  grep -q '^class ' "$f" || rm "$f"
done
# protoc's imports are absolute, by proto path: kvpark.v1 is already where they point, grpc.health.v1 is not.
sed -i 's/^from grpc\.health\.v1 import /from kvpark.grpc_health.v1 import /' "$tmp"/grpc/health/v1/*.py

for pair in "kvpark/v1:kvpark/v1" "grpc/health/v1:kvpark/grpc_health/v1"; do
  from="$tmp/${pair%%:*}" to="$out/${pair##*:}"
  mkdir -p "$to"
  # Generated files of protos that no longer exist must not linger; hand-written files stay.
  rm -f "$to"/*_pb2.py "$to"/*_pb2.pyi "$to"/*_pb2_grpc.py
  cp "$from"/*_pb2.py "$from"/*_pb2.pyi "$from"/*_pb2_grpc.py "$to"/
done
echo "$out"
