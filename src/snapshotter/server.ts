// The snapshots gRPC service on a unix socket only root may connect to: containerd's proxy plugin
// (`[proxy_plugins.NAME] type = "snapshot"`) calls it.
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { log } from '../log';
import type { SnapshotsHandlers } from './generated/containerd/services/snapshots/v1/Snapshots';
import type { Info as WireInfo } from './generated/containerd/services/snapshots/v1/Info';
import type { Timestamp } from './generated/google/protobuf/Timestamp';
import { snapshotsApi } from './proto';
import { SnapshotError, type Info, type Snapshotter } from './snapshotter';

const STATUS: Record<SnapshotError['code'], grpc.status> = {
  NOT_FOUND: grpc.status.NOT_FOUND,
  ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
};

function timestamp(ms: number): Timestamp {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

function millis(t: Timestamp | null | undefined): number {
  return t ? Number(t.seconds ?? 0) * 1000 + Math.floor((t.nanos ?? 0) / 1e6) : 0;
}

function wireInfo(i: Info): WireInfo {
  return {
    name: i.name,
    parent: i.parent,
    kind: i.kind,
    createdAt: timestamp(i.created),
    updatedAt: timestamp(i.updated),
    labels: i.labels,
  };
}

function grpcError(method: string, err: unknown): Partial<grpc.StatusObject> {
  if (err instanceof SnapshotError) {
    if (err.code !== 'ALREADY_EXISTS') log.debug('snapshotter refused a request', { method, error: err.message });
    return { code: STATUS[err.code], details: err.message };
  }
  log.error('snapshotter request failed', { method, error: (err as Error).message });
  return { code: grpc.status.INTERNAL, details: (err as Error).message ?? String(err) };
}

/** Answers a unary call with what `op` resolves to, or the status code its error maps to. */
function unary<Req, Res>(method: string, op: (req: Req) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const start = performance.now();
    const answered = () =>
      log.debug('snapshotter request answered', { method, ms: +(performance.now() - start).toFixed(1) });
    op(call.request).then(
      (res) => (answered(), callback(null, res)),
      (err: unknown) => (answered(), callback(grpcError(method, err))),
    );
  };
}

export interface SnapshotterServer {
  close(): Promise<void>;
}

/** Serves `sn` on `socket`, whose directory exists (root's only) and where no file is. */
export async function serveSnapshotter(socket: string, sn: Snapshotter): Promise<SnapshotterServer> {
  const handlers: SnapshotsHandlers = {
    Prepare: unary('Prepare', async (r) => ({ mounts: await sn.prepare(r.key, r.parent, r.labels) })),
    View: unary('View', async (r) => ({ mounts: await sn.view(r.key, r.parent, r.labels) })),
    Mounts: unary('Mounts', async (r) => ({ mounts: await sn.mounts(r.key) })),
    Commit: unary('Commit', async (r) => (await sn.commit(r.name, r.key, r.labels), {})),
    Remove: unary('Remove', async (r) => (await sn.remove(r.key), {})),
    Stat: unary('Stat', async (r) => ({ info: wireInfo(await sn.stat(r.key)) })),
    Update: unary('Update', async (r) => {
      const i = r.info;
      if (!i) throw new SnapshotError('INVALID_ARGUMENT', 'Update without info');
      const next = await sn.update(
        {
          name: i.name,
          parent: i.parent,
          kind: 'COMMITTED',
          created: millis(i.createdAt),
          updated: 0,
          labels: i.labels,
        },
        r.updateMask?.paths ?? [],
      );
      return { info: wireInfo(next) };
    }),
    List: (call) => {
      sn.list(call.request.filters).then(
        (infos) => {
          // In batches, as containerd's own service streams them, to stay under the message size limit.
          for (let i = 0; i < infos.length; i += 100) call.write({ info: infos.slice(i, i + 100).map(wireInfo) });
          call.end();
        },
        (err: unknown) => call.destroy(Object.assign(new Error('List failed'), grpcError('List', err))),
      );
    },
    Usage: unary('Usage', (r) => sn.usage(r.key)),
    Cleanup: unary('Cleanup', async () => (await sn.cleanup(), {})),
  };
  const server = new grpc.Server();
  server.addService(snapshotsApi().containerd.services.snapshots.v1.Snapshots.service, handlers);
  try {
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
  } catch (err) {
    throw new Error(`snapshotter socket ${socket}: ${(err as Error).message}`, { cause: err });
  }
  fs.chmodSync(socket, 0o600); // root only: snapshots are root's filesystems
  log.info('snapshotter serving', { socket, root: sn.root });
  return {
    // Calls in flight are cancelled: the daemon is about to unmount what they would hand out.
    close: async () => {
      server.forceShutdown();
      fs.rmSync(socket, { force: true });
    },
  };
}
