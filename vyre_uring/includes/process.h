/*
 * Process state of the ring module: the fork generation and thread tokens. Each
 * is a static of the one compilation unit that includes this header
 * (vyre_uring._ring); another extension including it would get counters of its
 * own, which the atfork handler never bumps. The reader's engine therefore never
 * includes it: it asks the ring (ring_enter, ring_acquire).
 */
#ifndef VYRE_URING_PROCESS_H
#define VYRE_URING_PROCESS_H

#include <pthread.h>
#include <stdint.h>

/* ---- fork detection --------------------------------------------------------
 * A ring's mappings and fd are inherited by a forked child but belong to the
 * parent's ring; a child must not submit to it, drain it or cancel its requests.
 * A pthread_atfork child handler bumps a generation that each Ring compares with
 * the one it was created in: one load per call, no getpid() syscall. */
/* Registered ring fds belong to the registering thread (the kernel keeps them in
 * the task's io_uring context); a Ring uses its registered index only there. A
 * pthread_t is reused once its thread exits, so threads are told apart by a token
 * drawn from a counter on first use, never reused. */
static uint64_t vy_thread_tokens = 0;
static __thread uint64_t vy_this_thread_token = 0;
static inline uint64_t vy_thread_token(void)
{
    if (vy_this_thread_token == 0)
        vy_this_thread_token = __atomic_add_fetch(&vy_thread_tokens, 1, __ATOMIC_RELAXED);
    return vy_this_thread_token;
}

static unsigned long vy_fork_generation = 0;
/* The child's thread is a new task with an empty registered-ring table: it must
 * not pass for the thread that registered the parent's rings. */
static void vy_after_fork_child(void)
{
    vy_fork_generation++;
    vy_this_thread_token = 0;
}
static inline int vy_install_atfork(void)
{
    return -pthread_atfork(NULL, NULL, vy_after_fork_child);
}
static inline unsigned long vy_fork_gen(void) { return vy_fork_generation; }

#endif /* VYRE_URING_PROCESS_H */
