// What a FUSE session keeps on disk so that the next daemon can take its connection over (the
// /dev/fuse fd kept by an fd keeper): the kernel still holds the node ids, file handles and INIT
// settings of the daemon that died, so they are never chosen again, only read back from here.
import fs from 'node:fs';
import type { JSONSchemaType, ValidateFunction } from 'ajv';

/** What INIT settled: protocol minor, largest request in pages, INIT flags. */
export interface NegotiatedInit {
  minor: number;
  maxPages: number;
  flags: number;
}

/** The part of the state the filesystem (BlobFs) owns. */
export interface BlobFsState {
  /** Absent until the kernel's INIT is answered. */
  init?: NegotiatedInit;
  /** One more for each daemon that takes the session over: handles it gives out never collide with older ones. */
  generation: number;
  /** The node id of every file ever attached in this session: an id is never given to another name. */
  nodes: Record<string, number>;
}

export interface FuseSessionState extends BlobFsState {
  /** major:minor of the FUSE filesystem (mountinfo): the connection this state belongs to. */
  dev: string;
}

const MAX_ID = Number.MAX_SAFE_INTEGER;

const schema: JSONSchemaType<FuseSessionState> = {
  type: 'object',
  additionalProperties: false,
  required: ['dev', 'generation', 'nodes'],
  properties: {
    dev: { type: 'string', pattern: '^[0-9]+:[0-9]+$' },
    init: {
      type: 'object',
      nullable: true,
      additionalProperties: false,
      required: ['minor', 'maxPages', 'flags'],
      properties: {
        minor: { type: 'integer', minimum: 0, maximum: 0xffffffff },
        maxPages: { type: 'integer', minimum: 1, maximum: 0xffff },
        flags: { type: 'integer', minimum: 0, maximum: 0xffffffff },
      },
    },
    generation: { type: 'integer', minimum: 0, maximum: 0xffffffff },
    nodes: {
      type: 'object',
      required: [],
      additionalProperties: { type: 'integer', minimum: 2, maximum: MAX_ID },
    },
  },
};

let validate: ValidateFunction<FuseSessionState> | undefined;
function check(doc: unknown): doc is FuseSessionState {
  if (!validate) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded only when a session is taken over
    const Ajv = (require('ajv') as typeof import('ajv')).default;
    validate = new Ajv({ allErrors: true }).compile(schema);
  }
  return validate(doc);
}

/**
 * The state saved in `file`; throws naming the file when it is missing, unreadable or not a valid
 * state (including two names sharing a node id).
 */
export function loadFuseSessionState(file: string): FuseSessionState {
  let doc: unknown;
  try {
    doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`FUSE session state ${file}: ${(err as Error).message}`, { cause: err });
  }
  if (!check(doc)) {
    const problems = (validate?.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message}`).join('; ');
    throw new Error(`FUSE session state ${file} is not valid: ${problems}`);
  }
  const ids = Object.values(doc.nodes);
  if (new Set(ids).size !== ids.length) throw new Error(`FUSE session state ${file}: two names share a node id`);
  return doc;
}

/** Replaces the state atomically: a crash leaves the old state or the new one. */
export function saveFuseSessionState(file: string, state: FuseSessionState): void {
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(state), { mode: 0o600 });
  fs.renameSync(`${file}.tmp`, file);
}
