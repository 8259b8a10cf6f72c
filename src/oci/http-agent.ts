// The part of undici the registry client uses: an Agent and its request(). undici's index loads all
// of undici (fetch, WebSocket, cookies, caches...): 140 ms here, against about 50 for these two, on
// every command that talks to a registry. undici 7 has no exports map; the version is pinned by the
// lock file, and the registry tests go through these paths, so a move fails loudly there.
import type { Agent, Dispatcher } from 'undici';
import v8 from 'node:v8';

// undici parses HTTP/1.1 with llhttp compiled to WebAssembly. V8 first compiles it with its baseline
// compiler, then recompiles the parser's hot state machine with TurboFan: 0.3 CPU-s per process
// measured here (perf), a seventh of a whole conversion on 2 cores. Bodies pass through the parser
// in large spans, so the baseline code parses as fast as we need; the flag must be set before the
// first connection compiles the module.
v8.setFlagsFromString('--liftoff-only');

/* eslint-disable @typescript-eslint/no-require-imports */
const AgentClass = require('undici/lib/dispatcher/agent') as typeof Agent;
const apiRequest = require('undici/lib/api/api-request') as (this: Dispatcher, opts: Dispatcher.RequestOptions) => Promise<Dispatcher.ResponseData>;
/* eslint-enable @typescript-eslint/no-require-imports */

export interface HttpAgent {
  request(opts: Dispatcher.RequestOptions): Promise<Dispatcher.ResponseData>;
  close(): Promise<void>;
}

export function createHttpAgent(options: Agent.Options): HttpAgent {
  const agent = new AgentClass(options);
  return {
    request: (opts) => apiRequest.call(agent, opts),
    close: () => agent.close(),
  };
}
