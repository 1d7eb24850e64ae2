/* Counters and flags that the reader's jobs share across threads without the GIL:
 * the byte budget of iter_files, the fds all jobs hold (and have closed), a call's
 * stop flag, a staging plan's load counter and failed flag. None of them publishes
 * other data, so relaxed atomics suffice: each is a number that must
 * not tear or lose an update, read again on the next round of a job's loop. */
#ifndef VYRE_URING_COUNTERS_H
#define VYRE_URING_COUNTERS_H
#include <stdint.h>

static inline int64_t vy_i64_load(const int64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline int64_t vy_i64_add(int64_t *p, int64_t delta)
{
    return __atomic_add_fetch(p, delta, __ATOMIC_RELAXED);
}

/* Store `desired` if *p still holds `expected`; 1 when it did. */
static inline int vy_i64_cas(int64_t *p, int64_t expected, int64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_RELAXED,
                                       __ATOMIC_RELAXED);
}

static inline int vy_flag_get(const int *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void vy_flag_set(int *p)
{
    __atomic_store_n(p, 1, __ATOMIC_RELAXED);
}
#endif
