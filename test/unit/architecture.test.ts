// The layering of docs/ARCHITECTURE.md, checked on the sources: imports go from a layer to the same
// or a lower one, and no module reaches itself again through its imports.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { it } from 'node:test';

const SRC = path.resolve(__dirname, '..', '..', '..', 'src');

/** Higher imports lower; the top-level files of src/ are named without their extension. */
const RANK: Record<string, number> = {
  cli: 7,
  config: 6,
  daemon: 6,
  transport: 5,
  snapshotter: 5,
  storage: 4,
  convert: 3,
  builder: 3,
  mount: 2,
  blob: 1,
  erofs: 1,
  tree: 1,
  tar: 1,
  oci: 1,
  native: 0,
  errors: 0,
  log: 0,
  defaults: 0,
  'read-at': 0,
};

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sources(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

/** Relative imports of a file, as absolute paths without extension (type-only imports included). */
function importsOf(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/(?:from\s+|import\s+|import\(|require\()\s*'(\.{1,2}\/[^']+)'/g))
    out.push(path.resolve(path.dirname(file), m[1]));
  return out;
}

/** `cli`, `storage`, ... or the top-level file's name. */
function layerOf(file: string): string {
  return path.relative(SRC, file).split(path.sep)[0].replace(/\.ts$/, '');
}

const files = sources(SRC);
const graph = new Map(files.map((f) => [f.replace(/\.ts$/, ''), importsOf(f)]));

it('every source file belongs to a ranked layer', () => {
  const unranked = [...new Set(files.map(layerOf))].filter((l) => RANK[l] === undefined);
  assert.deepEqual(unranked, [], 'add new directories to RANK here and to docs/ARCHITECTURE.md');
});

it('imports go from a layer to the same or a lower one', () => {
  const upward: string[] = [];
  for (const [from, targets] of graph) {
    for (const to of targets) {
      const a = layerOf(from);
      const b = layerOf(to);
      if (RANK[b] > RANK[a]) upward.push(`${path.relative(SRC, from)} -> ${path.relative(SRC, to)}`);
    }
  }
  assert.deepEqual(upward, []);
});

it('no import cycles, between modules or between layers', () => {
  const cycles: string[] = [];
  const check = (g: Map<string, string[]>, name: (n: string) => string) => {
    const state = new Map<string, 'open' | 'done'>();
    const visit = (n: string, stack: string[]): void => {
      if (state.get(n) === 'done') return;
      if (state.get(n) === 'open') {
        cycles.push([...stack.slice(stack.indexOf(n)), n].map(name).join(' -> '));
        return;
      }
      state.set(n, 'open');
      for (const m of g.get(n) ?? []) if (g.has(m)) visit(m, [...stack, n]);
      state.set(n, 'done');
    };
    for (const n of g.keys()) visit(n, []);
  };
  check(graph, (n) => path.relative(SRC, n));
  const layers = new Map<string, string[]>();
  for (const [from, targets] of graph) {
    const a = layerOf(from);
    layers.set(a, [...new Set([...(layers.get(a) ?? []), ...targets.map(layerOf).filter((b) => b !== a)])]);
  }
  check(layers, (n) => n);
  assert.deepEqual(cycles, []);
});
