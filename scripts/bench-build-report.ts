// Prints the tables of scripts/bench-build: one row per tool (ours, mkfs.erofs) and a summary of
// the tree taken from our `build --json` line. The bash script runs the tools and times them; this
// only does the arithmetic and the layout.
import fs from 'node:fs';
import { parseArgs } from 'node:util';

interface BuildJson {
  bootstrap: { path: string; bytes: number };
  blob: { id: string; path: string; bytes: number; chunks: number } | null;
  inodes: number;
  types: Record<string, number>;
  chunkSize: number;
  chunks: { referenced: number; stored: number; holes: number };
  contentBytes: number;
  storedBytes: number;
  dedupRatio: number;
  seconds: number;
}

interface Row {
  tool: string;
  ok: boolean;
  seconds: number;
  inodes: number | null;
  contentBytes: number | null;
  bootstrapBytes: number | null;
  blobBytes: number | null;
}

const MB = 1e6;

function num(name: string, text: string | undefined): number {
  const v = Number(text);
  if (text === undefined || text === '' || !Number.isFinite(v))
    throw new Error(`--${name}: expected a number, got ${JSON.stringify(text)}`);
  return v;
}

function optNum(name: string, text: string | undefined): number | null {
  return text === undefined || text === '' ? null : num(name, text);
}

/** Aligned plain-text columns: the first column left-aligned, the rest right-aligned (numbers) or left. */
function layout(rows: ReadonlyArray<readonly string[]>, rest: 'right' | 'left' = 'right'): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const pad = (cell: string, c: number): string =>
    c === 0 || rest === 'left' ? cell.padEnd(widths[c]) : cell.padStart(widths[c]);
  return rows.map((r) => r.map(pad).join('  ').trimEnd()).join('\n');
}

function toolRow(r: Row): string[] {
  if (!r.ok) return [r.tool, 'failed', '-', '-', '-', '-', '-'];
  const perSec = (n: number | null, f: (v: number) => string): string =>
    n === null || r.seconds <= 0 ? 'n/a' : f(n / r.seconds);
  const mb = (n: number | null): string => (n === null ? 'n/a' : (n / MB).toFixed(2));
  const pct =
    r.bootstrapBytes === null || r.contentBytes === null || r.contentBytes === 0
      ? 'n/a'
      : `${((100 * r.bootstrapBytes) / r.contentBytes).toFixed(3)}%`;
  return [
    r.tool,
    r.seconds.toFixed(2),
    perSec(r.inodes, (v) => Math.round(v).toString()),
    perSec(r.contentBytes, (v) => (v / MB).toFixed(1)),
    mb(r.bootstrapBytes),
    pct,
    mb(r.blobBytes),
  ];
}

function main(argv: string[]): void {
  const { values: a } = parseArgs({
    args: argv,
    strict: true,
    options: {
      source: { type: 'string' },
      paths: { type: 'string' },
      'ours-json': { type: 'string' },
      'ours-seconds': { type: 'string' },
      'ref-name': { type: 'string', default: 'mkfs.erofs' },
      'ref-ok': { type: 'string' },
      'ref-seconds': { type: 'string' },
      'ref-bootstrap': { type: 'string' },
      'ref-blob': { type: 'string' },
    },
  });

  // Our JSON line; absent or unreadable means our build failed.
  let ours: BuildJson | null = null;
  if (a['ours-json']) {
    const text = fs.readFileSync(a['ours-json'], 'utf8').trim();
    const last = text
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .pop();
    if (last) ours = JSON.parse(last) as BuildJson;
  }
  const paths = optNum('paths', a.paths);

  const rows: Row[] = [
    ours
      ? {
          tool: 'erofs-ondemand',
          ok: true,
          seconds: num('ours-seconds', a['ours-seconds']),
          inodes: ours.inodes,
          contentBytes: ours.contentBytes,
          bootstrapBytes: ours.bootstrap.bytes,
          blobBytes: ours.blob ? ours.blob.bytes : 0,
        }
      : {
          tool: 'erofs-ondemand',
          ok: false,
          seconds: 0,
          inodes: null,
          contentBytes: null,
          bootstrapBytes: null,
          blobBytes: null,
        },
    a['ref-ok'] === '1'
      ? {
          tool: a['ref-name'] ?? 'mkfs.erofs',
          ok: true,
          seconds: num('ref-seconds', a['ref-seconds']),
          // Same tree: files/s and MB/s use our inode count and content bytes (paths from find if ours failed).
          inodes: ours ? ours.inodes : paths,
          contentBytes: ours ? ours.contentBytes : null,
          bootstrapBytes: num('ref-bootstrap', a['ref-bootstrap']),
          blobBytes: num('ref-blob', a['ref-blob']),
        }
      : {
          tool: a['ref-name'] ?? 'mkfs.erofs',
          ok: false,
          seconds: 0,
          inodes: null,
          contentBytes: null,
          bootstrapBytes: null,
          blobBytes: null,
        },
  ];

  const out: string[] = [];
  out.push(
    layout([['tool', 'seconds', 'files/s', 'MB/s', 'bootstrap MB', 'bootstrap %', 'blob MB'], ...rows.map(toolRow)]),
  );
  out.push('');
  out.push('(seconds = wall time incl. process start-up; files/s = inodes / s; MB/s = content bytes chunked / s;');
  out.push(' MB = 1e6 bytes; bootstrap % = bootstrap size / content bytes)');
  const exact = rows
    .filter((r) => r.ok)
    .map((r) => `${r.tool} bootstrap ${r.bootstrapBytes ?? '?'} B, blob ${r.blobBytes ?? '?'} B`);
  if (exact.length > 0) out.push(`exact sizes: ${exact.join('; ')}`);
  out.push('');

  if (ours) {
    const t = ours.types;
    const typeList = Object.entries(t)
      .filter(([, n]) => n > 0)
      .map(([k, n]) => `${n} ${k}`)
      .join(', ');
    const tree: string[][] = [
      ['source', a.source ?? '?'],
      ['inodes', `${ours.inodes} (${typeList})`],
    ];
    if (paths !== null)
      tree.push(['paths (find -xdev)', `${paths}${paths !== ours.inodes ? ' (hard links count once as inodes)' : ''}`]);
    tree.push(
      ['content bytes', `${ours.contentBytes} (${(ours.contentBytes / MB).toFixed(2)} MB)`],
      ['stored bytes', `${ours.storedBytes} (${(ours.storedBytes / MB).toFixed(2)} MB)`],
      ['chunk size', `${ours.chunkSize}`],
      ['chunks', `${ours.chunks.referenced} referenced, ${ours.chunks.stored} stored, ${ours.chunks.holes} holes`],
      ['dedup ratio', `${ours.dedupRatio.toFixed(3)}x`],
      ['our build (own timer)', `${ours.seconds.toFixed(2)} s`],
    );
    out.push('tree (from erofs-ondemand --json):');
    out.push(
      layout(tree, 'left')
        .split('\n')
        .map((l) => `  ${l}`)
        .join('\n'),
    );
  } else {
    out.push(
      `tree: no summary (erofs-ondemand build failed)${paths !== null ? `; ${paths} paths (find -xdev) under ${a.source ?? '?'}` : ''}`,
    );
  }
  process.stdout.write(`${out.join('\n')}\n`);
}

try {
  main(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`bench-build-report: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
