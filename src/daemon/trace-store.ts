// Access traces: the ones this node recorded, one file per lazy image (<cache-dir>/traces/<digest
// hex>.json), the ones in the registry (artifacts whose subject is the lazy image), and the choice of
// the trace to replay when an image is mounted.
import fs from 'node:fs';
import path from 'node:path';
import type { BlobIndex } from '../blob/blob-index';
import { log } from '../log';
import { CREATED_ANNOTATION, newestArtifact, pushArtifact } from '../oci/artifacts';
import { digestHex } from '../oci/digest';
import type { HostClient } from '../oci/host-client';
import type { Descriptor } from '../oci/types';
import { checkTrace, MAX_TRACE_ENTRIES, TRACE_MEDIA_TYPE, type AccessTrace } from '../storage/access-trace';
import type { BlobCache } from '../storage/blob-cache';

/** The artifactType of a trace artifact (its one layer is the trace, of TRACE_MEDIA_TYPE). */
export const TRACE_ARTIFACT_TYPE = 'application/vnd.erofs-ondemand.trace.v1';

/** The most bytes a trace artifact's layer may hold: MAX_TRACE_ENTRIES entries of a generous size each. */
export const MAX_TRACE_BYTES = MAX_TRACE_ENTRIES * 256;

/** Where a lazy image lives in the registry: what its trace artifacts refer to. */
export interface TracedImage {
  /** The lazy manifest's digest. */
  digest: string;
  /** A trace is checked against them: the registry's is fetched while they are still being opened. */
  blobs: readonly BlobCache[] | PromiseLike<readonly BlobCache[]>;
  client: HostClient;
  repo: string;
  subject: Descriptor;
}

/** A trace with when it was made (ms since the epoch) and where it comes from. */
export interface DatedTrace {
  trace: AccessTrace;
  createdMs: number;
  /** 'local', or the artifact's manifest digest. */
  source: string;
}

/** The newest trace artifact of a lazy image in its registry, not checked against the image; null when there is none. */
export async function registryTrace(
  client: HostClient,
  repo: string,
  image: string,
): Promise<{ doc: unknown; createdMs: number; digest: string } | null> {
  const found = await newestArtifact(client, repo, image, TRACE_ARTIFACT_TYPE, TRACE_MEDIA_TYPE, MAX_TRACE_BYTES);
  if (!found) return null;
  return {
    doc: JSON.parse(found.data.toString('utf8')) as unknown,
    createdMs: Date.parse(found.annotations[CREATED_ANNOTATION] ?? '') || 0,
    digest: found.digest,
  };
}

/** What a trace amounts to: its entries, the bytes of their chunks, the time from the mount to its last first access. */
export interface TraceSummary {
  image: string;
  entries: number;
  blobs: number;
  bytes: number;
  /** What fetching exactly its chunks takes from the registry. */
  compressedBytes: number;
  windowMs: number;
}

export function summarizeTrace(trace: AccessTrace, indexes: readonly BlobIndex[]): TraceSummary {
  return {
    image: trace.image,
    entries: trace.entries.length,
    blobs: trace.blobs.length,
    bytes: trace.entries.reduce((n, e) => n + (indexes[e.blob]?.chunks[e.chunk]?.uncompressedSize ?? 0), 0),
    compressedBytes: trace.entries.reduce((n, e) => n + (indexes[e.blob]?.chunks[e.chunk]?.compressedSize ?? 0), 0),
    windowMs: trace.entries.reduce((m, e) => Math.max(m, e.ms), 0),
  };
}

export class TraceStore {
  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  private file(image: string): string {
    return path.join(this.dir, `${digestHex(image)}.json`);
  }

  /** Keeps a finished recording (atomically: a crash leaves the old trace or the new one). */
  save(trace: AccessTrace): void {
    const file = this.file(trace.image);
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(trace));
    fs.renameSync(`${file}.tmp`, file);
    log.info('access trace recorded', { image: trace.image, chunks: trace.entries.length });
  }

  /** The trace recorded here for `image`, or null; one that does not fit the image is ignored with a warning. */
  local(image: string, blobs: readonly BlobCache[]): { trace: AccessTrace; mtimeMs: number } | null {
    const file = this.file(image);
    let text: string;
    let mtimeMs: number;
    try {
      text = fs.readFileSync(file, 'utf8');
      mtimeMs = fs.statSync(file).mtimeMs;
    } catch {
      return null;
    }
    try {
      return { trace: checkTrace(JSON.parse(text), image, blobs), mtimeMs };
    } catch (err) {
      log.warn('local access trace ignored', { image, file, error: (err as Error).message });
      return null;
    }
  }

  /** The registry's newest trace of the image, checked; null (with a warning saying why) when there is none fit for use. */
  async remote(image: TracedImage): Promise<DatedTrace | null> {
    const fetching = registryTrace(image.client, image.repo, image.digest);
    fetching.catch(() => undefined); // awaited below, once the blobs are open
    const blobs = await image.blobs;
    let found: Awaited<ReturnType<typeof registryTrace>>;
    try {
      found = await fetching;
    } catch (err) {
      log.warn('access trace in the registry not read', { image: image.digest, error: (err as Error).message });
      return null;
    }
    if (!found) return null;
    try {
      return {
        trace: checkTrace(found.doc, image.digest, blobs),
        createdMs: found.createdMs,
        source: found.digest,
      };
    } catch (err) {
      log.warn('access trace in the registry ignored', {
        image: image.digest,
        artifact: found.digest,
        error: (err as Error).message,
      });
      return null;
    }
  }

  /** The trace to replay for an image: the newer of this node's and the registry's (this node's when as new), or null. */
  async find(image: TracedImage): Promise<DatedTrace | null> {
    const remote = this.remote(image);
    remote.catch(() => undefined); // the blobs failed to open: rejected below
    const mine = this.local(image.digest, await image.blobs);
    const theirs = await remote;
    if (mine && (!theirs || mine.mtimeMs >= theirs.createdMs))
      return { trace: mine.trace, createdMs: mine.mtimeMs, source: 'local' };
    return theirs;
  }

  /** Pushes a trace as an artifact whose subject is the lazy image; returns the artifact's digest. */
  push(trace: AccessTrace, image: TracedImage): Promise<string> {
    return pushTrace(trace, image);
  }
}

/** Pushes a trace as an artifact whose subject is the lazy image; returns the artifact's digest. */
export async function pushTrace(
  trace: AccessTrace,
  image: Pick<TracedImage, 'digest' | 'client' | 'repo' | 'subject'>,
): Promise<string> {
  if (trace.image !== image.digest) throw new Error(`the trace of ${trace.image} is not one of ${image.digest}`);
  const data = Buffer.from(JSON.stringify(trace));
  const digest = await pushArtifact(
    image.client.upstream,
    image.repo,
    image.subject,
    TRACE_ARTIFACT_TYPE,
    { [CREATED_ANNOTATION]: new Date().toISOString() },
    { mediaType: TRACE_MEDIA_TYPE, data },
  );
  log.info('access trace pushed', { image: trace.image, artifact: digest, chunks: trace.entries.length });
  return digest;
}
