// A registry in this process that keeps what is pushed in memory and answers as the distribution spec
// says (uploads in one PUT, in PATCH chunks or streamed, manifests by tag and digest, blob Range
// reads, no referrers API), unless a test's `misanswer` answers a request in its place: for pushes against registries that
// answer wrongly, without root or a registry binary. And an OCI layout written from a TestImage.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { sha256Digest } from '../../src/oci/digest';
import { MediaType } from '../../src/oci/types';
import type { TestImage } from './small-image';

/** A request as the registry saw it: its method, path (query left out) and query. */
export interface SeenRequest {
  method: string;
  path: string;
  query: URLSearchParams;
}

/** An answer a test gives in the registry's place. */
export interface Answer {
  status: number;
  headers?: Record<string, string>;
  body?: string | Buffer;
}

export interface MemoryRegistry {
  host: string;
  blobs: Map<string, Buffer>;
  /** Manifests by `repo@digest` and `repo:tag`. */
  manifests: Map<string, { raw: Buffer; mediaType: string }>;
  requests: SeenRequest[];
  /** Answers a request in the registry's place when it returns an answer. */
  misanswer?: (req: SeenRequest) => Answer | undefined;
  close(): Promise<void>;
}

const API = /^\/v2\/(.+?)\/(blobs\/uploads\/(\w*)|blobs\/(sha256:[0-9a-f]{64})|manifests\/([^/]+)|referrers\/(.+))$/;

export async function startMemoryRegistry(): Promise<MemoryRegistry> {
  const uploads = new Map<string, Buffer[]>();
  let nextUpload = 0;
  const reg = { blobs: new Map(), manifests: new Map(), requests: [] } as unknown as MemoryRegistry;

  const answer = (res: http.ServerResponse, a: Answer) => {
    const body = a.body === undefined ? Buffer.alloc(0) : Buffer.from(a.body);
    res.writeHead(a.status, { 'content-length': String(body.length), ...a.headers }).end(body);
  };

  function handle(seen: SeenRequest, data: Buffer, headers: http.IncomingHttpHeaders): Answer {
    const m = API.exec(seen.path);
    if (seen.path === '/v2/') return { status: 200 };
    if (!m) return { status: 404 };
    const [, repo, , uploadId, blobDigest, manifestRef] = m;
    const uploadPath = (id: string) => `/v2/${repo}/blobs/uploads/${id}`;
    if (uploadId !== undefined) {
      if (seen.method === 'POST') {
        const mount = seen.query.get('mount');
        if (mount && reg.blobs.has(mount)) return { status: 201, headers: { 'docker-content-digest': mount } };
        const id = String(++nextUpload);
        uploads.set(id, [data]);
        return { status: 202, headers: { location: uploadPath(id), range: '0-0' } };
      }
      const parts = uploads.get(uploadId);
      if (!parts) return { status: 404 };
      if (seen.method === 'DELETE') {
        uploads.delete(uploadId);
        return { status: 204 };
      }
      parts.push(data);
      const held = parts.reduce((n, p) => n + p.length, 0);
      if (seen.method === 'PATCH')
        return { status: 202, headers: { location: uploadPath(uploadId), range: `0-${held - 1}` } };
      if (seen.method === 'PUT') {
        const whole = Buffer.concat(parts);
        const digest = `sha256:${createHash('sha256').update(whole).digest('hex')}`;
        if (digest !== seen.query.get('digest')) return { status: 400 };
        uploads.delete(uploadId);
        reg.blobs.set(digest, whole);
        return { status: 201, headers: { location: `/v2/${repo}/blobs/${digest}`, 'docker-content-digest': digest } };
      }
      return { status: 405 };
    }
    if (blobDigest !== undefined) {
      const blob = reg.blobs.get(blobDigest);
      if (!blob) return { status: 404 };
      const range = /^bytes=(\d+)-(\d+)$/.exec(headers.range ?? '');
      if (range) {
        const [start, end] = [Number(range[1]), Math.min(Number(range[2]), blob.length - 1)];
        if (start > end) return { status: 416, headers: { 'content-range': `bytes */${blob.length}` } };
        return {
          status: 206,
          headers: { 'content-range': `bytes ${start}-${end}/${blob.length}` },
          body: blob.subarray(start, end + 1),
        };
      }
      return { status: 200, headers: { 'docker-content-digest': blobDigest }, body: blob };
    }
    if (manifestRef !== undefined) {
      if (seen.method === 'PUT') {
        const digest = sha256Digest(data);
        const stored = { raw: data, mediaType: headers['content-type'] ?? MediaType.ociManifest };
        reg.manifests.set(`${repo}@${digest}`, stored);
        if (!manifestRef.startsWith('sha256:')) reg.manifests.set(`${repo}:${manifestRef}`, stored);
        return {
          status: 201,
          headers: { location: `/v2/${repo}/manifests/${digest}`, 'docker-content-digest': digest },
        };
      }
      const got = reg.manifests.get(
        manifestRef.startsWith('sha256:') ? `${repo}@${manifestRef}` : `${repo}:${manifestRef}`,
      );
      if (!got) return { status: 404 };
      return {
        status: 200,
        headers: { 'content-type': got.mediaType, 'docker-content-digest': sha256Digest(got.raw) },
        body: got.raw,
      };
    }
    return { status: 404 }; // referrers: not offered, so clients use the tag schema
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://registry');
    const seen: SeenRequest = { method: req.method ?? 'GET', path: url.pathname, query: url.searchParams };
    reg.requests.push(seen);
    const parts: Buffer[] = [];
    req.on('data', (b: Buffer) => parts.push(b));
    req.on('end', () => {
      const a = reg.misanswer?.(seen) ?? handle(seen, Buffer.concat(parts), req.headers);
      answer(res, a);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  reg.host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  reg.close = () => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return reg;
}

/** Writes `img` as an OCI image layout in `dir`, tagged `tag`; returns its `oci:` reference. */
export function writeLayout(dir: string, img: TestImage, tag = 'latest'): string {
  const blobs = path.join(dir, 'blobs', 'sha256');
  fs.mkdirSync(blobs, { recursive: true });
  for (const b of [img.config, ...img.layers, img.manifest])
    fs.writeFileSync(path.join(blobs, sha256Digest(b).slice(7)), b);
  fs.writeFileSync(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const manifests = [
    {
      mediaType: MediaType.ociManifest,
      digest: img.digest,
      size: img.manifest.length,
      annotations: { 'org.opencontainers.image.ref.name': tag },
    },
  ];
  fs.writeFileSync(
    path.join(dir, 'index.json'),
    JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests }),
  );
  return `oci:${dir}:${tag}`;
}
