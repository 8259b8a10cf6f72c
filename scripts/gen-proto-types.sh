#!/bin/sh
# Regenerates src/snapshotter/generated/ from the vendored protos (proto/), with the options
# src/snapshotter/proto.ts loads them with: the types must describe what the loader hands out.
set -e
cd "$(dirname "$0")/.."
rm -rf src/snapshotter/generated
npx proto-loader-gen-types --longs=Number --enums=String --defaults --oneofs --grpcLib=@grpc/grpc-js \
  -I proto -O src/snapshotter/generated \
  github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto
npx prettier --log-level warn --write src/snapshotter/generated
