// A client of a snapshotter's gRPC socket that calls it as containerd does: for tests that play
// containerd's part themselves (its unpacker's calls for a CRI pull, a View, Remove).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { snapshotsApi } from '../../src/snapshotter/proto';
import type { SnapshotsClient } from '../../src/snapshotter/generated/containerd/services/snapshots/v1/Snapshots';
import type { Info__Output } from '../../src/snapshotter/generated/containerd/services/snapshots/v1/Info';

export interface SnapshotsCaller {
  unary<Res>(method: 'Prepare' | 'View' | 'Remove', req: object): Promise<Res>;
  /** List with one filter, every streamed batch joined. */
  list(filter: string): Promise<Info__Output[]>;
  close(): void;
}

export function snapshotsClient(socket: string): SnapshotsCaller {
  const client = new (snapshotsApi().containerd.services.snapshots.v1.Snapshots)(
    `unix://${socket}`,
    grpc.credentials.createInsecure(),
  ) as SnapshotsClient;
  return {
    unary: <Res>(method: 'Prepare' | 'View' | 'Remove', req: object) =>
      new Promise<Res>((resolve, reject) =>
        (client[method] as (r: object, cb: (e: grpc.ServiceError | null, r?: Res) => void) => void).call(
          client,
          req,
          (e, r) => (e ? reject(e) : resolve(r as Res)),
        ),
      ),
    list: (filter) =>
      new Promise<Info__Output[]>((resolve, reject) => {
        const out: Info__Output[] = [];
        const call = client.List({ filters: [filter] });
        call.on('data', (r: { info: Info__Output[] }) => out.push(...r.info));
        call.on('end', () => resolve(out));
        call.on('error', reject);
      }),
    close: () => client.close(),
  };
}

/**
 * Plays containerd's unpacker in a CRI pull of `source` (a registry reference) whose lazy form the
 * snapshotter finds: each layer is prepared with the CRI labels and must be refused ALREADY_EXISTS,
 * committed at once as exactly one snapshot. Returns the committed placeholders, lowest first.
 */
export async function pullLazyLayers(client: SnapshotsCaller, source: string): Promise<string[]> {
  const raw = execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${source}`]);
  const manifestDigest = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
  const layers = (JSON.parse(raw.toString()) as { layers: Array<{ digest: string }> }).layers.map((l) => l.digest);
  const placeholders: string[] = [];
  let parent = '';
  let chain = '';
  for (const [i, layer] of layers.entries()) {
    chain = `sha256:${createHash('sha256').update(`${chain} ${layer}`).digest('hex')}`;
    const labels = {
      'containerd.io/snapshot.ref': chain,
      'containerd.io/snapshot/cri.image-ref': source,
      'containerd.io/snapshot/cri.manifest-digest': manifestDigest,
      'containerd.io/snapshot/cri.layer-digest': layer,
      'containerd.io/snapshot/cri.image-layers': layers.slice(i).join(','),
    };
    const refused = await client.unary('Prepare', { key: `default/${i}/extract ${chain}`, parent, labels }).then(
      () => null,
      (e: grpc.ServiceError) => e,
    );
    if (refused?.code !== grpc.status.ALREADY_EXISTS)
      throw new Error(`layer ${i}: Prepare answered ${refused ? refused.message : 'with mounts'}, not ALREADY_EXISTS`);
    const found = await client.list(`labels."containerd.io/snapshot.ref"==${chain},parent==${JSON.stringify(parent)}`);
    if (found.length !== 1 || found[0].kind !== 'COMMITTED')
      throw new Error(`layer ${i}: ${found.length} snapshots of its chain, not one committed`);
    parent = found[0].name;
    placeholders.push(parent);
  }
  return placeholders;
}
