/*
 * LD_PRELOAD shim that makes a WebAssembly pre-initialisation (Wizer snapshot) deterministic, so
 * that building the same sources twice gives the same bytes.
 *
 * componentize-qjs runs the plugin's top level inside Wasmtime and snapshots the memory. QuickJS
 * seeds its state from WASI random and reads WASI clocks while doing so, and Wasmtime serves both
 * from the host's getrandom() and clock_gettime(): those values end up in the snapshot, so two
 * builds of the same sources differ in a handful of bytes. With this shim loaded:
 *   - getrandom()/getentropy()/syscall(SYS_getrandom) return a fixed xorshift stream;
 *   - CLOCK_REALTIME reads SOURCE_DATE_EPOCH (seconds) when set;
 *   - the monotonic clocks start at 1 s and advance 1 us per read (so waits still end).
 * Both streams are per thread, so what one thread reads does not depend on how the others were
 * scheduled (one shared stream gave two different outputs in six builds).
 * Only for build tools: never load it into anything that needs real randomness.
 *
 * cc -shared -fPIC -O2 -o deterministic.so deterministic.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>

static __thread uint64_t state = 0x9e3779b97f4a7c15ull;
static __thread uint64_t mono_ns = 1000000000ull;

static ssize_t fill(void *buf, size_t len) {
  unsigned char *p = buf;
  for (size_t i = 0; i < len; i++) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    p[i] = (unsigned char)state;
  }
  return (ssize_t)len;
}

ssize_t getrandom(void *buf, size_t len, unsigned int flags) {
  (void)flags;
  return fill(buf, len);
}

int getentropy(void *buf, size_t len) {
  fill(buf, len);
  return 0;
}

long syscall(long number, ...) {
  va_list ap;
  long a[6];
  va_start(ap, number);
  for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
  va_end(ap);
  if (number == SYS_getrandom) return fill((void *)a[0], (size_t)a[1]);
  static long (*real)(long, ...);
  if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
  return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

int clock_gettime(clockid_t id, struct timespec *ts) {
  static int (*real)(clockid_t, struct timespec *);
  if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
  const char *epoch = getenv("SOURCE_DATE_EPOCH");
  if (id == CLOCK_REALTIME && epoch) {
    ts->tv_sec = atol(epoch);
    ts->tv_nsec = 0;
    return 0;
  }
  if (id == CLOCK_MONOTONIC || id == CLOCK_MONOTONIC_RAW || id == CLOCK_BOOTTIME) {
    mono_ns += 1000;
    uint64_t now = mono_ns;
    ts->tv_sec = (time_t)(now / 1000000000ull);
    ts->tv_nsec = (long)(now % 1000000000ull);
    return 0;
  }
  return real(id, ts);
}
