// A command other than the daemon lives for seconds, and most of its code is warm rather than hot:
// the tar walk, the EROFS writer and undici's request path run a few thousand times each. V8 has
// TurboFan recompile a function (on background threads) once it has used up an interrupt budget of
// 66 KiB of bytecode; in a conversion that recompiled about 130 functions for 0.45 CPU-s (perf), a
// sixth of all its CPU on 2 cores, much of it for code that was done by the time it was compiled.
// With sixteen times the budget only the hot loops get there: converting minbase took 2.57 -> 2.29
// CPU-s and 1.92 -> 1.86 s, python3 3.43 -> 3.05 CPU-s and 2.45 -> 2.35 s (medians of 9 and 7).
// The daemon keeps V8's default: it runs for hours, where optimising early pays off.
import v8 from 'node:v8';

const COMMAND_INTERRUPT_BUDGET = 16 * 66 * 1024;

if (process.argv[2] !== 'daemon') v8.setFlagsFromString(`--interrupt-budget=${COMMAND_INTERRUPT_BUDGET}`);
