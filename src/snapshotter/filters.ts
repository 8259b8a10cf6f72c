// containerd's filter syntax (github.com/containerd/containerd/filters), as containerd sends it to a
// snapshotter's List: `labels."containerd.io/snapshot.ref"==sha256:...,parent=="ns/1/sha256:..."`.
// A list of filters matches when any filter does; a filter's comma-separated terms must all match.
import { InputError } from '../errors';

type Operator = '==' | '!=' | '~=';

interface Term {
  path: string[];
  /** Absent: the field must be present (non-empty). */
  op?: Operator;
  value?: string;
}

/** The fields a filter may name, by field path: `labels` takes one more segment, the label's key. */
export type FieldOf = (path: readonly string[]) => string | undefined;

/** A filter's terms; throws an InputError naming the filter when it is not in containerd's syntax. */
function parse(filter: string): Term[] {
  let i = 0;
  const fail = (why: string): never => {
    throw new InputError(`${why} at offset ${i}`, { filter });
  };
  const quoted = (): string => {
    const quote = filter[i];
    let out = '';
    for (i++; i < filter.length && filter[i] !== quote; i++) {
      if (filter[i] === '\\' && i + 1 < filter.length) i++;
      out += filter[i];
    }
    if (i >= filter.length) fail('unterminated quoted string');
    i++;
    return out;
  };
  const bare = (stop: RegExp): string => {
    const start = i;
    while (i < filter.length && !stop.test(filter[i])) i++;
    return filter.slice(start, i);
  };
  const terms: Term[] = [];
  while (i < filter.length) {
    const path: string[] = [];
    for (;;) {
      const segment = filter[i] === '"' || filter[i] === '/' ? quoted() : bare(/[.,=!~]/);
      if (segment === '') fail('empty field name');
      path.push(segment);
      if (filter[i] !== '.') break;
      i++;
    }
    const term: Term = { path };
    const op = filter.slice(i, i + 2);
    if (op === '==' || op === '!=' || op === '~=') {
      i += 2;
      term.op = op;
      term.value = filter[i] === '"' || filter[i] === '/' ? quoted() : bare(/,/);
    }
    terms.push(term);
    if (i < filter.length) {
      if (filter[i] !== ',') fail('expected a comma');
      i++;
    }
  }
  return terms;
}

/** A predicate for `filters` (none, or an empty one: everything matches); throws an InputError on bad syntax. */
export function compileFilters(filters: readonly string[]): (field: FieldOf) => boolean {
  const parsed = filters.filter((f) => f.trim() !== '').map(parse);
  if (parsed.length === 0) return () => true;
  const regexps = new Map<string, RegExp>();
  for (const t of parsed.flat()) {
    if (t.op !== '~=' || regexps.has(t.value ?? '')) continue;
    try {
      regexps.set(t.value ?? '', new RegExp(t.value ?? ''));
    } catch (err) {
      throw new InputError(`invalid regular expression: ${(err as Error).message}`, { filter: filters.join(' ') });
    }
  }
  const matches = (t: Term, field: FieldOf): boolean => {
    const got = field(t.path);
    switch (t.op) {
      case undefined:
        return got !== undefined && got !== '';
      case '==':
        return got === t.value;
      case '!=':
        return got !== t.value;
      case '~=':
        return got !== undefined && (regexps.get(t.value ?? '') as RegExp).test(got);
    }
  };
  return (field) => parsed.some((terms) => terms.every((t) => matches(t, field)));
}
