// Uploading a blob while it is still being written to a local file, so that the push of a layer's
// blob overlaps its conversion instead of following it. The file is the source of truth: if the
// registry refuses the streamed session, the finished file is pushed the ordinary way.
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { log } from '../log';
import { readByPosition } from '../read-at';
import type { BlobUpload, PushResult } from './blob-upload';
import type { RegistryClient } from './registry';
import type { Descriptor } from './types';

/**
 * One PATCH whose body follows the file as it grows (see RegistryClient.streamUpload); it opens once
 * a read's worth of bytes is there, so a blob that turns out empty or tiny costs no session.
 */
export class StreamedBlobPush {
  private end = 0;
  private finished = false;
  private cancelled = false;
  private wake: (() => void) | null = null;
  private upload: BlobUpload | null = null;
  private sending: Promise<void> | null = null;
  private failure: unknown = null;
  private readonly fd: number;
  /**
   * Reads go round these buffers. undici waits for the socket to drain after each write larger than
   * its buffer (any of these), so a buffer is on the wire before the body is asked for more, and is
   * reused two reads later.
   */
  private readonly buffers: Buffer[] = [];

  constructor(
    private readonly client: RegistryClient,
    private readonly repo: string,
    file: string,
    /** Bytes per read of the file into the request body; the session opens once this many are written. */
    private readonly readSize: number,
    private readonly mountFrom?: string,
  ) {
    this.fd = fs.openSync(file, 'r');
  }

  written(bytes: number): void {
    this.end = bytes;
    if (!this.sending && bytes >= this.readSize) this.begin();
    this.poke();
  }

  /**
   * The file is complete and `desc` names it: stores it unless the registry has it already. A blob
   * that turns out to exist cancels the session, so nothing is stored twice.
   */
  async finish(desc: Descriptor): Promise<PushResult> {
    this.finished = true;
    try {
      if (!this.sending && this.end > 0) this.begin();
      this.poke();
      // The check overlaps the last bytes going out.
      const exists = this.client.blobExists(this.repo, desc.digest, desc.size);
      exists.catch(() => undefined);
      if (await exists) {
        await this.stop();
        return 'exists';
      }
      await this.sending;
      if (this.failure === null && this.upload && this.upload.offset === desc.size) {
        await this.client.commitUpload(this.upload, desc.digest);
        return 'uploaded';
      }
      if (this.failure !== null) {
        log.warn('streamed blob upload failed; uploading the finished blob', {
          repository: this.repo,
          digest: desc.digest,
          error: (this.failure as Error).message,
        });
      } else if (this.upload) {
        log.warn('streamed blob upload ended short; uploading the finished blob', {
          repository: this.repo,
          digest: desc.digest,
          received: this.upload.offset,
          size: desc.size,
        });
      }
      await this.stop();
      return await this.client.pushBlob(
        this.repo,
        desc.digest,
        desc.size,
        () => Readable.from(readByPosition(this.fd, desc.size, 'blob file', 1 << 20)),
        { mountFrom: this.mountFrom },
      );
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

  private begin(): void {
    this.sending = (async () => {
      this.upload = await this.client.startUpload(this.repo);
      if (!this.cancelled) await this.client.streamUpload(this.upload, this.body());
    })().catch((err) => {
      this.failure = err;
    });
  }

  private poke(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** Ends the body (if it is still going) and cancels the session, if one was opened. */
  private async stop(): Promise<void> {
    this.cancelled = true;
    this.poke();
    await this.sending;
    const upload = this.upload;
    this.upload = null;
    if (upload)
      await this.client
        .cancelUpload(upload)
        .catch((err) =>
          log.debug('cancelling a blob upload failed', { repository: this.repo, error: (err as Error).message }),
        );
  }

  private async *body(): AsyncGenerator<Buffer> {
    let sent = 0;
    for (let turn = 0; ;) {
      if (this.cancelled) return;
      const ready = this.end - sent;
      if (ready > 0 && (ready >= this.readSize || this.finished)) {
        const n = Math.min(ready, this.readSize);
        const buf = (this.buffers[turn++ % 3] ??= Buffer.allocUnsafeSlow(this.readSize));
        const got = fs.readSync(this.fd, buf, 0, n, sent);
        if (got !== n) throw new Error(`blob file gave ${got} of ${n} bytes at ${sent}`);
        sent += n;
        yield buf.subarray(0, n);
        continue;
      }
      if (this.finished) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }
}
