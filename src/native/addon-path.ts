// Where the addons are built: build/Release under the package root, found from this file, so that
// both src/ (tests) and dist/ find them.
import fs from 'node:fs';
import path from 'node:path';

function packageRoot(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`no package.json above ${__dirname}`);
  }
}

export function addonPath(name: string): string {
  return path.join(packageRoot(), 'build', 'Release', `${name}.node`);
}

/** An executable built with the addons (binding.gyp), e.g. erofs-ondemand-holder. */
export function executablePath(name: string): string {
  return path.join(packageRoot(), 'build', 'Release', name);
}

/** Loads a built addon (process.dlopen: a .node file is no module for the TypeScript import syntax). */
export function loadAddon<T>(name: string): T {
  const module = { exports: {} as T };
  process.dlopen(module, addonPath(name));
  return module.exports;
}
