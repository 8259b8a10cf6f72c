// Errors that name the input they are about. `context` fields end up in log lines and CLI messages.

export interface ErrorContext {
  image?: string;
  layer?: string;
  path?: string;
  [key: string]: string | number | undefined;
}

export class InputError extends Error {
  readonly context: ErrorContext;

  constructor(message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    const where = Object.entries(context)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k} ${JSON.stringify(v)}`)
      .join(', ');
    super(where ? `${where}: ${message}` : message, options);
    this.name = 'InputError';
    this.context = context;
  }
}
