// Prometheus metrics (prom-client) on a local address: cache misses and their latency, bytes fetched, fetch latency,
// verification failures, cache usage.
import http from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ChunkFetcher } from '../storage/chunk-fetcher';
import type { LocalCopyStats } from '../storage/chunk-index';

/** A latency as a Prometheus histogram, and its recent values for the percentiles `status` prints. */
export class Timing {
  private readonly histogram: Histogram;
  private readonly recent: number[] = [];

  constructor(registry: Registry, name: string, help: string) {
    this.histogram = new Histogram({
      name,
      help,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    });
  }

  observe(seconds: number): void {
    this.histogram.observe(seconds);
    this.recent.push(seconds);
    if (this.recent.length > 1000) this.recent.shift();
  }

  /** Over the last thousand values; null before the first. */
  percentiles(): { p50: number; p90: number; p99: number; count: number } | null {
    if (this.recent.length === 0) return null;
    const s = [...this.recent].sort((a, b) => a - b);
    const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))];
    return { p50: at(0.5), p90: at(0.9), p99: at(0.99), count: s.length };
  }
}

export class DaemonMetrics {
  readonly registry = new Registry();
  readonly misses = new Counter({
    name: 'erofs_ondemand_cache_misses_total',
    help: 'Reads that needed chunks fetched',
    registers: [this.registry],
  });
  /** One Range GET. */
  readonly fetch = new Timing(this.registry, 'erofs_ondemand_fetch_seconds', 'Duration of one Range GET');
  /** A miss, from the kernel's request to its answer: fetch, decompression, verification, write. */
  readonly miss = new Timing(
    this.registry,
    'erofs_ondemand_miss_seconds',
    "From the kernel's request to its answer, for reads that needed chunks fetched",
  );

  constructor(
    fetcher: () => ChunkFetcher,
    cacheBytes: () => number,
    evictedBytes: () => number,
    localCopies: () => LocalCopyStats,
  ) {
    const stat = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.set(read());
        },
      });
    stat(
      'erofs_ondemand_fetched_bytes_total',
      'Compressed bytes fetched from registries',
      () => fetcher().stats.bytesFetched,
    );
    stat('erofs_ondemand_fetch_requests_total', 'Range GETs sent', () => fetcher().stats.requests);
    stat(
      'erofs_ondemand_verify_failures_total',
      'Chunks whose bytes did not match their digest',
      () => fetcher().stats.verifyFailures,
    );
    stat('erofs_ondemand_inflight_chunks', 'Chunks being fetched now', () => fetcher().inFlight);
    stat('erofs_ondemand_cache_bytes', 'Bytes allocated by blob cache files', cacheBytes);
    stat(
      'erofs_ondemand_evicted_bytes_total',
      'Bytes of cached chunks evicted to keep the cache within its bound',
      evictedBytes,
    );
    stat(
      'erofs_ondemand_local_copy_chunks_total',
      'Chunks copied from another cached blob holding the same SHA-256 instead of fetched',
      () => localCopies().chunks,
    );
    stat(
      'erofs_ondemand_local_copy_saved_bytes_total',
      'Compressed bytes not fetched thanks to chunks copied from another cached blob',
      () => localCopies().savedBytes,
    );
  }

  /** Serves /metrics on `address` (host:port); resolves to the bound port. */
  listen(address: string): Promise<{ server: http.Server; port: number }> {
    const m = /^(.*):(\d+)$/.exec(address);
    if (!m) throw new Error(`metrics address ${JSON.stringify(address)} is not host:port`);
    const server = http.createServer(async (req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': this.registry.contentType });
      res.end(await this.registry.metrics());
    });
    return new Promise((resolve, reject) => {
      const refused = (err: Error) => reject(new Error(`metrics address ${address}: ${err.message}`));
      server.once('error', refused);
      try {
        server.listen(Number(m[2]), m[1].replace(/^\[|\]$/g, ''), () =>
          resolve({ server, port: (server.address() as { port: number }).port }),
        );
      } catch (err) {
        refused(err as Error); // a port out of range is thrown, not emitted
      }
    });
  }
}
