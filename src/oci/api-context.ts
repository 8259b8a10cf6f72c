// What errors of the distribution API name, checked before anything is sent: a request for an
// invalid repository, tag or digest fails here rather than at the registry.
import { InputError, type ErrorContext } from '../errors';
import { isValidRepository, isValidTag } from './reference';
import { isDigest } from './types';

/** `where` (registry, endpoint) and the repository; `what` names the request when the name is invalid. */
export function repoContext(where: ErrorContext, repo: string, what: string): ErrorContext {
  if (!isValidRepository(repo))
    throw new InputError('invalid repository name', { ...where, repository: repo, reference: what });
  return { ...where, repository: repo };
}

export function refContext(where: ErrorContext, repo: string, reference: string): ErrorContext {
  const ctx = { ...repoContext(where, repo, reference), reference };
  if (!isDigest(reference) && !isValidTag(reference)) throw new InputError('invalid tag or digest', ctx);
  return ctx;
}

export function digestContext(where: ErrorContext, repo: string, digest: string): ErrorContext {
  const ctx = { ...repoContext(where, repo, digest), digest };
  if (!isDigest(digest)) throw new InputError('invalid digest (sha256:<64 hex digits> expected)', ctx);
  return ctx;
}
