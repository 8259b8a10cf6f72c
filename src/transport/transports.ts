// Every cache-miss transport, best first: the daemon, `doctor` and the kernel probe iterate this list.
// A new transport is one module exporting a `TransportModule`, added here.
import { cachefilesTransport } from './cachefiles';
import { fanotifyTransport } from './fanotify';
import { fuseTransport } from './fuse';
import { TRANSPORT_NAMES, type TransportModule, type TransportName } from './transport';

const BY_NAME: Record<TransportName, TransportModule> = {
  cachefiles: cachefilesTransport,
  fanotify: fanotifyTransport,
  fuse: fuseTransport,
};

/** In the order 'auto' tries them. */
export const TRANSPORTS: readonly TransportModule[] = TRANSPORT_NAMES.map((n) => BY_NAME[n]);

export function transportModule(name: TransportName): TransportModule {
  return BY_NAME[name];
}
