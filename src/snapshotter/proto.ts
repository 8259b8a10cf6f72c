// containerd's snapshots API, loaded from the protos vendored under proto/ with the options the
// generated types (src/snapshotter/generated, `npm run gen-proto`) were made with.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { ProtoGrpcType } from './generated/snapshots';

/** From dist/src/snapshotter or src/snapshotter alike: the repository's proto/ directory. */
function protoRoot(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'proto');
    if (fs.existsSync(path.join(candidate, 'github.com'))) return candidate;
  }
  throw new Error(`no proto/ directory above ${__dirname}`);
}

export const PROTO_OPTIONS: protoLoader.Options = {
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

let loaded: ProtoGrpcType | undefined;

export function snapshotsApi(): ProtoGrpcType {
  loaded ??= grpc.loadPackageDefinition(
    protoLoader.loadSync('github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto', {
      ...PROTO_OPTIONS,
      includeDirs: [protoRoot()],
    }),
  ) as unknown as ProtoGrpcType;
  return loaded;
}
