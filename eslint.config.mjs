// typescript-eslint's recommended rules over the TypeScript sources; formatting is prettier's (.prettierrc).
import eslint from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  { ignores: ['dist/', 'build/', 'node_modules/', 'src/snapshotter/generated/'] },
  eslint.configs.recommended,
  tseslint.configs.recommended,
  {
    rules: {
      // `for (const _ of stream)`: a name that says it is not used.
      '@typescript-eslint/no-unused-vars': [
        'error',
        { varsIgnorePattern: '^_', argsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_' },
      ],
    },
  },
);
