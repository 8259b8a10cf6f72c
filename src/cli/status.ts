// Human form of the daemon's status.
import { bytes, table } from './format';

export interface DaemonStatus {
  transport: string;
  fdKeeper?: string;
  whenDaemonDies?: string;
  fetch: {
    requests: number;
    bytesFetched: number;
    verifyFailures: number;
    latency: { p50: number; p90: number; p99: number } | null;
  };
  inFlight: number;
  cacheBytes: number;
  cacheBoundBytes: number;
  evictedBytes: number;
  /** Chunks copied from another cached blob instead of fetched (the node's chunk index). */
  localCopies?: { chunks: number; savedBytes: number };
  mounts: Array<{
    target: string;
    image: string;
    cachedBytes: number;
    hitRatio: number | null;
    blobs: Array<{ chunks: number; cached: number }>;
  }>;
}

export function formatStatus(s: DaemonStatus): string {
  const ms = (x: number) => `${(x * 1000).toFixed(1)} ms`;
  const lat = s.fetch.latency
    ? `p50 ${ms(s.fetch.latency.p50)}, p90 ${ms(s.fetch.latency.p90)}, p99 ${ms(s.fetch.latency.p99)}`
    : 'no fetches yet';
  const head = [
    `transport ${s.transport}${s.fdKeeper ? ` (fds kept by: ${s.fdKeeper}; if the daemon dies, reads ${s.whenDaemonDies === 'blocks and resumes' ? 'wait for the next one' : `get ${s.whenDaemonDies}`})` : ''}; cache ${bytes(s.cacheBytes)} on disk${s.cacheBoundBytes ? ` (bound ${bytes(s.cacheBoundBytes)}, ${bytes(s.evictedBytes)} evicted)` : ''}; in-flight chunks ${s.inFlight}`,
    `fetched ${bytes(s.fetch.bytesFetched)} in ${s.fetch.requests} requests (${s.fetch.verifyFailures} verification failures); latency ${lat}`,
  ];
  if (s.localCopies?.chunks)
    head.push(
      `copied ${s.localCopies.chunks} chunks from other cached blobs instead of fetching ${bytes(s.localCopies.savedBytes)}`,
    );
  if (s.mounts.length === 0) return [...head, 'no mounts'].join('\n');
  const rows = [
    ['mount', 'image', 'cached', 'chunks', 'hit ratio'],
    ...s.mounts.map((m) => [
      m.target,
      m.image,
      bytes(m.cachedBytes),
      `${m.blobs.reduce((n, b) => n + b.cached, 0)}/${m.blobs.reduce((n, b) => n + b.chunks, 0)}`,
      m.hitRatio === null ? '-' : `${(100 * m.hitRatio).toFixed(1)}%`,
    ]),
  ];
  return [...head, '', table(rows)].join('\n');
}
