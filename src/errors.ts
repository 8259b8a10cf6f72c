// Errors that name the input they are about. `context` fields end up in log lines and CLI messages.

export interface ErrorContext {
  image?: string;
  layer?: string;
  path?: string;
  [key: string]: string | number | undefined;
}

export class InputError extends Error {
  readonly context: ErrorContext;
  /** The message without its context prefix, for re-wrapping with more context. */
  readonly detail: string;

  constructor(message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    const where = Object.entries(context)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k} ${JSON.stringify(v)}`)
      .join(', ');
    super(where ? `${where}: ${message}` : message, options);
    this.name = 'InputError';
    this.context = context;
    this.detail = message;
  }

  /** The same error with more context (outer context first, the error's own kept). An interruption stays one. */
  static wrap(err: unknown, context: ErrorContext): Error {
    if (err instanceof Interrupted) return err;
    if (err instanceof InputError) return new InputError(err.detail, { ...context, ...err.context }, { cause: err });
    return new InputError((err as Error).message ?? String(err), context, { cause: err });
  }
}

/** The user interrupted the command (Ctrl-C, SIGTERM); CLIs exit 130. */
export class Interrupted extends Error {
  constructor(message = 'interrupted') {
    super(message);
    this.name = 'Interrupted';
  }
}
