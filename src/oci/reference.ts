// Registry image references, `host[:port]/repo/path[:tag][@sha256:hex]`, with the grammar of the
// distribution spec and Docker Hub's short names (`ubuntu` is registry-1.docker.io/library/ubuntu:latest).
import { InputError } from '../errors';

export interface ImageReference {
  /** `host[:port]`, as spoken to: Docker Hub's aliases become `registry-1.docker.io`. */
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
}

export const DOCKER_HUB_REGISTRY = 'registry-1.docker.io';
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', DOCKER_HUB_REGISTRY]);

const PATH_COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const REPOSITORY_RE = new RegExp(`^${PATH_COMPONENT}(?:/${PATH_COMPONENT})*$`);
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DOMAIN_COMPONENT = '(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])';
const HOST_RE = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[0-9A-Fa-f:.]+\\])(?::[0-9]{1,5})?$`);
const DIGEST_GRAMMAR_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]+$/;
const SHA256_RE = /^sha256:[0-9a-f]{64}$/;
/** The reference grammar's bound on `host/repository`. */
const MAX_NAME_LENGTH = 255;

export function isValidRepository(name: string): boolean {
  return REPOSITORY_RE.test(name);
}

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

export function isValidRegistryHost(host: string): boolean {
  return HOST_RE.test(host);
}

/** Whether a first path component names a registry rather than a Docker Hub namespace. */
function looksLikeHost(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost';
}

export function parseReference(text: string): ImageReference {
  const fail = (why: string) => new InputError(`invalid image reference: ${why}`, { image: text });
  if (!text) throw fail('it is empty');
  if (/\s/.test(text)) throw fail('it contains whitespace');

  let name = text;
  let digest: string | undefined;
  const at = text.indexOf('@');
  if (at !== -1) {
    name = text.slice(0, at);
    digest = text.slice(at + 1);
    if (!DIGEST_GRAMMAR_RE.test(digest)) throw fail(`${JSON.stringify(digest)} is not a digest`);
    if (!digest.startsWith('sha256:'))
      throw fail(`digest algorithm ${JSON.stringify(digest.split(':')[0])} is not supported (only sha256)`);
    if (!SHA256_RE.test(digest))
      throw fail(`${JSON.stringify(digest)} is not a sha256 digest (64 lowercase hex digits)`);
  }

  let tag: string | undefined;
  const colon = name.lastIndexOf(':');
  if (colon > name.lastIndexOf('/')) {
    tag = name.slice(colon + 1);
    name = name.slice(0, colon);
    if (!isValidTag(tag)) throw fail(`tag ${JSON.stringify(tag)} does not match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`);
  }

  let registry = DOCKER_HUB_REGISTRY;
  let repository = name;
  const slash = name.indexOf('/');
  if (slash !== -1 && looksLikeHost(name.slice(0, slash))) {
    registry = name.slice(0, slash);
    repository = name.slice(slash + 1);
    if (!isValidRegistryHost(registry)) throw fail(`${JSON.stringify(registry)} is not a registry host[:port]`);
  }
  if (DOCKER_HUB_ALIASES.has(registry.toLowerCase())) {
    registry = DOCKER_HUB_REGISTRY;
    if (!repository.includes('/')) repository = `library/${repository}`;
  }

  if (!repository) throw fail('the repository name is empty');
  if (!isValidRepository(repository)) {
    const why = /[A-Z]/.test(repository)
      ? 'must be lowercase'
      : 'must be lowercase alphanumeric path components separated by "/", joined within a component by ".", "_", "__" or "-"';
    throw fail(`repository ${JSON.stringify(repository)} ${why}`);
  }
  if (registry.length + 1 + repository.length > MAX_NAME_LENGTH)
    throw fail(`the name is longer than ${MAX_NAME_LENGTH} characters`);

  if (tag === undefined && digest === undefined) tag = 'latest';
  const ref: ImageReference = { registry, repository };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  return ref;
}

export function formatReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag !== undefined ? `:${ref.tag}` : ''}${ref.digest !== undefined ? `@${ref.digest}` : ''}`;
}

/** What to ask the registry's manifests endpoint for: the digest when there is one (it pins the content). */
export function manifestReference(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? 'latest';
}
