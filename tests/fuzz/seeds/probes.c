/* Seed for the usdt_notes fuzz target: a tiny shared library with CPython-like SDT probes
 * (semaphores, register, memory and constant arguments) and the symbols ProfileMate looks up.
 * Built by make_seeds.py with systemtap-sdt-dev's <sys/sdt.h>. */
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>

__extension__ unsigned short python_gc__start_semaphore __attribute__((unused))
    __attribute__((section(".probes")));
__extension__ unsigned short python_gc__done_semaphore __attribute__((unused))
    __attribute__((section(".probes")));
__extension__ unsigned short python_function__entry_semaphore __attribute__((unused))
    __attribute__((section(".probes")));

long _PyRuntime[4];

int cudaLaunchKernel(long gen, long n, int *p) {
    if (python_gc__start_semaphore) STAP_PROBE1(python, gc__start, gen);
    if (python_gc__done_semaphore) STAP_PROBE2(python, gc__done, n, p[3]);
    STAP_PROBE3(python, function__entry, gen, n, 5);
    return (int)(n + _PyRuntime[1]);
}
