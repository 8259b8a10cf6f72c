// Uploading a blob while it is still being written to a local file, so that the push of a layer's
// blob overlaps its conversion instead of following it. The file is the source of truth: if the
// registry refuses the streamed session, the finished file is pushed the ordinary way.
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { log } from '../log';
import { readAt } from '../read-at';
import { pushScope } from './auth';
import type { BlobUpload, PushResult, RegistryClient } from './registry';
import type { Descriptor } from './types';

export class StreamedBlobPush {
  private end = 0;
  private finished = false;
  private cancelled = false;
  private wake: (() => void) | null = null;
  private upload: BlobUpload | null = null;
  private failure: unknown = null;
  private readonly pumping: Promise<void>;
  private readonly fd: number;
  private readonly buf: Buffer;

  constructor(
    private readonly client: RegistryClient,
    private readonly repo: string,
    file: string,
    /** Bytes per PATCH; the last one may be shorter. */
    private readonly partSize: number,
    private readonly mountFrom?: string,
  ) {
    this.fd = fs.openSync(file, 'r');
    this.buf = Buffer.allocUnsafe(partSize);
    this.pumping = this.pump().catch((err) => {
      this.failure = err;
    });
  }

  written(bytes: number): void {
    this.end = bytes;
    if (this.end - this.sent >= this.partSize) this.poke();
  }

  /**
   * The file is complete and `desc` names it: stores it unless the registry has it already. A blob
   * that turns out to exist cancels the session, so nothing is stored twice.
   */
  async finish(desc: Descriptor): Promise<PushResult> {
    this.finished = true;
    try {
      if ((await this.client.headBlob(this.repo, desc.digest, [pushScope(this.repo)])) !== null) {
        await this.stop();
        return 'exists';
      }
      this.poke();
      await this.pumping;
      if (this.failure === null && this.upload && this.upload.offset === desc.size) {
        await this.client.commitUpload(this.upload, desc.digest);
        return 'uploaded';
      }
      if (this.failure !== null) {
        log.warn('streamed blob upload failed; uploading the finished blob', { repository: this.repo, digest: desc.digest, error: (this.failure as Error).message });
      }
      await this.stop();
      return await this.client.pushBlob(this.repo, desc.digest, desc.size, () => Readable.from(readFd(this.fd, desc.size)), { mountFrom: this.mountFrom });
    } catch (err) {
      await this.stop().catch(() => undefined);
      throw err;
    } finally {
      fs.closeSync(this.fd);
    }
  }

  /** Nothing will be pushed (the layer made no blob, or the conversion failed). */
  async abandon(): Promise<void> {
    this.finished = true;
    try {
      await this.stop();
    } finally {
      fs.closeSync(this.fd);
    }
  }

  private get sent(): number {
    return this.upload?.offset ?? 0;
  }

  private poke(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** Waits for the pump and cancels its session, if it opened one. */
  private async stop(): Promise<void> {
    this.cancelled = true;
    this.poke();
    await this.pumping;
    const upload = this.upload;
    this.upload = null;
    if (upload) await this.client.cancelUpload(upload).catch((err) => log.debug('cancelling a blob upload failed', { repository: this.repo, error: (err as Error).message }));
  }

  private async pump(): Promise<void> {
    for (;;) {
      if (this.cancelled) return;
      const ready = this.end - this.sent;
      if (this.finished ? ready > 0 : ready >= this.partSize) {
        this.upload ??= await this.client.startUpload(this.repo);
        if (this.cancelled) return;
        const n = Math.min(ready, this.partSize);
        const got = fs.readSync(this.fd, this.buf, 0, n, this.sent);
        if (got !== n) throw new Error(`blob file gave ${got} of ${n} bytes at ${this.sent}`);
        await this.client.patchUpload(this.upload, this.buf.subarray(0, n));
        continue;
      }
      if (this.finished) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }
}

/** The file's first `size` bytes, by position: the file may have been renamed since it was opened. */
async function* readFd(fd: number, size: number): AsyncGenerator<Buffer> {
  for (let offset = 0; offset < size; ) {
    const buf = Buffer.allocUnsafe(Math.min(1 << 20, size - offset));
    await readAt(fd, buf, 0, buf.length, offset, 'blob file');
    offset += buf.length;
    yield buf;
  }
}
