// A command other than the daemon is short-lived, and most of its code is warm rather than hot: the
// tar walk, the EROFS writer and undici's request path run a few thousand times each. V8 has
// TurboFan recompile a function (on background threads) once it has used up an interrupt budget of
// bytecode (V8's default: 66 KiB); in a conversion that recompiles many functions that are done by
// the time they are compiled, CPU the conversion itself could have used. With sixteen times the
// budget only the hot loops get there (the README's bench notes give the effect). The daemon keeps
// V8's default: it runs for hours, where optimising early pays off.
import v8 from 'node:v8';

const COMMAND_INTERRUPT_BUDGET = 16 * 66 * 1024;

if (process.argv[2] !== 'daemon') v8.setFlagsFromString(`--interrupt-budget=${COMMAND_INTERRUPT_BUDGET}`);
