/*
 * The few things of the ring core that must be exact C: constants newer than the
 * build machine's <linux/io_uring.h>, the memory-ordering vocabulary, and raw
 * syscall wrappers that return -errno (errno is read at once, never later).
 *
 * The system header is used for the structs; whatever a newer kernel offers that an
 * older header (Debian 12 ships Linux 6.1's) lacks is defined here behind #ifndef,
 * with the kernel's own values. Opcodes are an enum in the kernel header, so they
 * come from there; the build needs headers from Linux 5.15 or newer.
 */
#ifndef VYRE_URING_ABI_H
#define VYRE_URING_ABI_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <linux/io_uring.h>
#include <linux/stat.h>

/* VYRE_URING_DEBUG=1 builds define VY_DEBUG: internal invariants are checked after
 * every fill and reap, and a violation aborts with a message. */
#ifndef VY_DEBUG
#define VY_DEBUG 0
#endif

#ifndef VYRE_CYTHON_VERSION
#define VYRE_CYTHON_VERSION "unknown"
#endif

/* Syscall numbers are the same on every architecture since Linux 5.1. */
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)      /* 5.18 */
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)    /* 5.19 */
#endif
#ifndef IORING_SETUP_TASKRUN_FLAG
#define IORING_SETUP_TASKRUN_FLAG (1U << 9)    /* 5.19 */
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)  /* 6.0 */
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)  /* 6.1 */
#endif
#ifndef IORING_SQ_TASKRUN
#define IORING_SQ_TASKRUN (1U << 2)            /* 5.19 */
#endif
#ifndef IORING_ENTER_EXT_ARG
#define IORING_ENTER_EXT_ARG (1U << 3)         /* 5.11 */
#endif
#ifndef IORING_FEAT_EXT_ARG
#define IORING_FEAT_EXT_ARG (1U << 8)          /* 5.11 */
#endif
#ifndef IORING_FEAT_NODROP
#define IORING_FEAT_NODROP (1U << 1)           /* 5.5 */
#endif
#ifndef IORING_ENTER_REGISTERED_RING
#define IORING_ENTER_REGISTERED_RING (1U << 4) /* 5.18 */
#endif
#ifndef IORING_REGISTER_RING_FDS
#define IORING_REGISTER_RING_FDS 20            /* 5.18 */
#define IORING_UNREGISTER_RING_FDS 21
#endif
#ifndef IORING_ASYNC_CANCEL_ALL
#define IORING_ASYNC_CANCEL_ALL (1U << 0)      /* 5.19 */
#endif
#ifndef IORING_ASYNC_CANCEL_ANY
#define IORING_ASYNC_CANCEL_ANY (1U << 2)      /* 5.19 */
#endif
#ifndef IORING_FILE_INDEX_ALLOC
#define IORING_FILE_INDEX_ALLOC (~0U)          /* 5.19 */
#endif
#ifndef IORING_REGISTER_PROBE
#define IORING_REGISTER_PROBE 8
#endif
#ifndef IO_URING_OP_SUPPORTED
#define IO_URING_OP_SUPPORTED (1U << 0)
#endif

/* struct io_uring_getevents_arg (5.11) under our own name, so an older header
 * that lacks it still builds; the layout is the kernel's. */
struct vy_getevents_arg {
    uint64_t sigmask;
    uint32_t sigmask_sz;
    uint32_t min_wait_usec;   /* "pad" before 6.12 */
    uint64_t ts;              /* pointer to struct __kernel_timespec */
};

/* struct io_uring_rsrc_update (5.13), for registering the ring fd itself. */
struct vy_rsrc_update {
    uint32_t offset;
    uint32_t resv;
    uint64_t data;
};

struct vy_timespec {          /* struct __kernel_timespec */
    int64_t tv_sec;
    long long tv_nsec;
};

/* ---- memory ordering: the whole vocabulary of the ring ------------------- */
/* Each call site says which kernel access it pairs with. */
static inline uint32_t vy_load_acquire(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline uint32_t vy_load_relaxed(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void vy_store_release(uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline void vy_fence_full(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
/* The busy flag that turns concurrent use of one Ring into RingBusyError. Every
 * read and write of it holds the GIL, which orders them between threads: a plain
 * test-and-set is enough, and spares each call a locked instruction (two per round
 * trip: 5% of a NOP's). Where no GIL serialises (a free-threaded build) it is an
 * atomic exchange. */
static inline int vy_try_lock(int *flag)
{
#ifdef Py_GIL_DISABLED
    /* Acquire: pairs with vy_unlock's release store by the last holder. */
    return __atomic_exchange_n(flag, 1, __ATOMIC_ACQUIRE) == 0;
#else
    if (*flag)
        return 0;
    *flag = 1;
    return 1;
#endif
}
static inline void vy_unlock(int *flag)
{
#ifdef Py_GIL_DISABLED
    /* Release: pairs with the next holder's acquire exchange in vy_try_lock. */
    __atomic_store_n(flag, 0, __ATOMIC_RELEASE);
#else
    *flag = 0;
#endif
}

/* ---- raw syscalls, each returning -errno on failure ---------------------- */
static inline int vy_io_uring_setup(unsigned entries, struct io_uring_params *p)
{
    long r = syscall(__NR_io_uring_setup, entries, p);
    return r < 0 ? -errno : (int)r;
}
static inline int vy_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete,
                                    unsigned flags, void *arg, size_t argsz)
{
    long r = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
    return r < 0 ? -errno : (int)r;
}
static inline int vy_io_uring_register(int fd, unsigned opcode, const void *arg,
                                       unsigned nr_args)
{
    long r = syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
    return r < 0 ? -errno : (int)r;
}
/* statx(2) of a path, following symlinks, as the STATX opcode would do it: the
 * reader sizes files this way rather than in the ring, where STATX always goes to
 * an io-wq worker thread (a wake-up and two context switches per file). */
static inline int vy_statx(const char *path, struct statx *out)
{
    long r = syscall(__NR_statx, AT_FDCWD, path, 0, STATX_BASIC_STATS, out);
    return r < 0 ? -errno : 0;
}
static inline void *vy_mmap_ring(int fd, size_t len, uint64_t offset, int *err)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   (off_t)offset);
    *err = (p == MAP_FAILED) ? errno : 0;
    return p;
}
static inline int vy_poll_in(int fd, int timeout_ms)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN, .revents = 0 };
    int r = poll(&pfd, 1, timeout_ms);
    return r < 0 ? -errno : r;
}
static inline double vy_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif /* VYRE_URING_ABI_H */
