// `erofs-ondemand trace show|push|record`: the access traces the daemon records for its mounts, shown,
// pushed to the registry as referrers of the lazy image, or recorded by running a command in an image.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BlobIndex } from '../blob/blob-index';
import { registriesFromFlags, type RegistryFlags } from '../config';
import { callControl } from '../daemon/control';
import type { TraceAnswer } from '../daemon/daemon';
import { findLazyImage, openLazyBlob, type LazyImage } from '../daemon/image-store';
import { pushTrace, registryTrace, summarizeTrace, type TraceSummary } from '../daemon/trace-store';
import { InputError } from '../errors';
import { unmount } from '../mount/file-backed';
import { mountOverlay, mountRuntimeFilesystems } from '../mount/overlay';
import { closeRegistryClients } from '../oci/open-image';
import { checkTrace, rebaseTrace, type AccessTrace } from '../storage/access-trace';
import type { RemoteBlob } from '../storage/chunk-fetcher';
import { bytes, mountPointOrImage } from './format';

function describe(s: TraceSummary): string {
  return [
    `image    ${s.image}`,
    `entries  ${s.entries} chunks in ${s.blobs} blobs, ${bytes(s.bytes)} (${bytes(s.compressedBytes)} compressed)`,
    `window   ${(s.windowMs / 1000).toFixed(1)} s from the mount to the last first access`,
  ].join('\n');
}

/** The data blobs of a lazy image, with their chunk tables, in device order. */
async function lazyBlobs(ref: string, lazy: LazyImage): Promise<Array<{ remote: RemoteBlob; index: BlobIndex }>> {
  const blobs = [];
  for (const desc of lazy.manifest.layers.slice(1)) blobs.push(await openLazyBlob(ref, lazy.client, lazy.repo, desc));
  return blobs;
}

/** The newest trace in the registry of the lazy image `ref` names (the image itself or through its referrer). */
async function registryShow(ref: string, flags: RegistryFlags): Promise<{ trace: AccessTrace; summary: TraceSummary }> {
  try {
    const lazy = await findLazyImage(ref, registriesFromFlags(flags));
    const found = await registryTrace(lazy.client, lazy.repo, lazy.digest);
    if (!found) throw new InputError('the registry holds no access trace of this image', { image: ref });
    const blobs = await lazyBlobs(ref, lazy);
    const indexes = blobs.map((b) => b.index);
    let trace: AccessTrace;
    try {
      trace = checkTrace(found.doc, lazy.digest, blobs);
    } catch (err) {
      // Shown all the same, for what it is: daemons will not replay it.
      process.stderr.write(`erofs-ondemand: warning: ${(err as Error).message}; daemons ignore this trace\n`);
      trace = found.doc as AccessTrace;
      if (!Array.isArray(trace?.entries) || !Array.isArray(trace.blobs)) throw err;
    }
    return { trace, summary: summarizeTrace(trace, indexes) };
  } finally {
    await closeRegistryClients();
  }
}

/** `trace show TARGET|IMAGE`: a path asks the daemon for its mount's trace, a reference asks the registry. */
export async function showCommand(
  what: string,
  opts: RegistryFlags & { socket: string; json?: boolean },
): Promise<void> {
  const target = mountPointOrImage(what);
  const r = target.startsWith('/')
    ? ((await callControl(opts.socket, { op: 'trace', target, action: 'show' })) as TraceAnswer)
    : await registryShow(what, opts);
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(r.trace)}\n`);
    return;
  }
  const state = 'ended' in r ? `\nstate    ${r.ended ? `window closed (${r.ended})` : 'recording'}` : '';
  process.stdout.write(`${describe(r.summary)}${state}\n`);
}

/** `trace push TARGET`: closes the mount's trace window and pushes the trace as a referrer of the lazy image. */
export async function pushCommand(target: string, opts: { socket: string; json?: boolean }): Promise<void> {
  const r = (await callControl(opts.socket, { op: 'trace-push', target: path.resolve(target) })) as TraceAnswer & {
    artifact: string;
  };
  process.stdout.write(
    opts.json
      ? `${JSON.stringify({ artifact: r.artifact, ...r.summary })}\n`
      : `${describe(r.summary)}\npushed   ${r.artifact}\n`,
  );
}

/**
 * `trace rebase FROM TO`: the registry's newest trace of FROM (checked against FROM), carried over to
 * TO by chunk digest (`rebaseTrace`) and pushed as a trace of TO: a rebuilt image starts with the
 * trace of the version before it.
 */
export async function rebaseCommand(from: string, to: string, opts: RegistryFlags & { json?: boolean }): Promise<void> {
  try {
    const registries = registriesFromFlags(opts);
    const source = await findLazyImage(from, registries);
    const dest = await findLazyImage(to, registries);
    const found = await registryTrace(source.client, source.repo, source.digest);
    if (!found) throw new InputError('the registry holds no access trace of this image', { image: from });
    const trace = checkTrace(found.doc, source.digest, await lazyBlobs(from, source));
    const blobs = await lazyBlobs(to, dest);
    const rebased = rebaseTrace(trace, dest.digest, blobs);
    if (rebased.entries.length === 0)
      throw new InputError(`no chunk its trace names is in ${to}: nothing to push`, { image: from });
    const artifact = await pushTrace(rebased, dest);
    const summary = summarizeTrace(
      rebased,
      blobs.map((b) => b.index),
    );
    const leftOut = trace.entries.length - rebased.entries.length;
    process.stdout.write(
      opts.json
        ? `${JSON.stringify({ artifact, from: source.digest, leftOut, ...summary })}\n`
        : [
            describe(summary),
            `from     ${source.digest} (${leftOut} of its ${trace.entries.length} entries left out)`,
            `pushed   ${artifact}\n`,
          ].join('\n'),
    );
  } finally {
    await closeRegistryClients();
  }
}

/** Runs `cmd` chrooted into `root`; resolves to its exit status (a signal or the timeout: non-zero). */
function runChrooted(root: string, cmd: readonly string[], timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn('chroot', [root, ...cmd], { stdio: 'inherit', timeout: timeoutMs });
    child.on('error', (err) => reject(new Error(`cannot run chroot: ${err.message}`)));
    child.on('exit', (code, signal) => {
      if (signal) process.stderr.write(`erofs-ondemand: ${cmd[0]} ended by ${signal}\n`);
      resolve(code ?? 128);
    });
  });
}

/**
 * What a container runtime reads of an image before its process starts: containerd resolves the
 * user and groups of a container's spec from them. A trace recorded under chroot holds them only
 * because they are read here; a container start then finds them fetched.
 */
const RUNTIME_READS = ['etc/passwd', 'etc/group'];

/** Reads each of RUNTIME_READS under `root` that is a regular file reached without symbolic links. */
function readAsRuntime(root: string): void {
  for (const rel of RUNTIME_READS) {
    let p = root;
    let regular = false;
    for (const part of rel.split('/')) {
      p = path.join(p, part);
      const st = fs.lstatSync(p, { throwIfNoEntry: false });
      regular = st?.isFile() ?? false;
      if (!st || st.isSymbolicLink()) break;
    }
    if (regular) fs.readFileSync(p);
  }
}

/**
 * `trace record IMAGE -- CMD...`: through the running daemon, mounts the image in a temporary
 * directory, reads what a container runtime reads of it, runs CMD chrooted into an overlay of it
 * (writes go to a temporary upper directory; /proc, /sys and /dev mounted as a container runtime
 * would), then pushes the trace the run left. A failing CMD leaves its trace unpushed: it shows what was
 * read, and the command exits non-zero.
 */
export async function recordCommand(
  image: string,
  cmd: readonly string[],
  opts: { socket: string; timeout: string; json?: boolean },
): Promise<void> {
  if (cmd.length === 0) throw new InputError('trace record needs a command to run after --', { image });
  const timeoutMs = Number(opts.timeout) * 1000;
  if (!(timeoutMs > 0)) throw new InputError(`--timeout ${JSON.stringify(opts.timeout)} is not a positive number`);
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'erofs-ondemand-trace-'));
  const [lower, upper, work, merged] = ['lower', 'upper', 'work', 'merged'].map((d) => path.join(base, d));
  for (const d of [lower, upper, work, merged]) fs.mkdirSync(d);
  let mounted = false;
  let overlaid = false;
  try {
    await callControl(opts.socket, { op: 'mount', ref: image, target: lower });
    mounted = true;
    mountOverlay({ lower, upper, work, target: merged });
    overlaid = true;
    readAsRuntime(merged);
    const unmountRuntime = mountRuntimeFilesystems(merged);
    let status: number;
    try {
      status = await runChrooted(merged, cmd, timeoutMs);
    } finally {
      unmountRuntime();
    }
    if (status !== 0) {
      const r = (await callControl(opts.socket, { op: 'trace', target: lower, action: 'end' })) as TraceAnswer;
      process.stderr.write(`erofs-ondemand: ${cmd[0]} exited with ${status}: its trace is not pushed\n`);
      process.stdout.write(opts.json ? `${JSON.stringify(r.summary)}\n` : `${describe(r.summary)}\n`);
      process.exitCode = 1;
      return;
    }
    await pushCommand(lower, opts);
  } finally {
    if (overlaid) unmount(merged);
    if (mounted) await callControl(opts.socket, { op: 'umount', target: lower });
    fs.rmSync(base, { recursive: true, force: true });
  }
}
