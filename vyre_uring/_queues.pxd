# The ring's core as C state with free functions: the submission queue, the completion
# queue and the slot table, each a struct, gathered in RingCore. The hot functions on
# them are inline here, so that the Ring (vyre_uring._ring) and the reader's engine
# (vyre_uring._engine) compile the same code into their loops. Nothing here keeps
# process state (fork generation, thread identity): that lives in _ring alone, and
# io_uring_enter goes through its exported ring_enter.
#
# Memory ordering, per STYLE.md's table: indices are free-running u32 (slot = idx &
# mask, count = tail - head); every atomic access names what it pairs with.
from cpython.buffer cimport Py_buffer
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.stdio cimport fprintf, stderr
from libc.stdlib cimport abort
from libc.string cimport memset
from posix.uio cimport iovec

from vyre_uring.includes.kernel cimport *

cdef extern from *:
    """
    /* Kernel user_data of the engine's own requests (cancels at close): its slot
     * index, all ones, is never a slot; nor is VY_NO_SLOT. */
    #define VY_INTERNAL_USER_DATA 0xFFFFFFFFFFFFFFFFull
    #define VY_NO_SLOT 0xFFFFFFFEu
    """
    const uint64_t INTERNAL_USER_DATA "VY_INTERNAL_USER_DATA"
    const uint32_t NO_SLOT "VY_NO_SLOT"


cdef struct Hold:
    # What keeps a request's memory alive from submission until its completion
    # (_holds.pxi): buffer exports, an owned object, an iovec array; one reference per
    # slot whose request uses it.
    Py_ssize_t refs
    Py_ssize_t nviews       # exports taken so far (released on free)
    Py_ssize_t capacity
    Py_buffer *views
    PyObject *obj           # owned reference, or NULL
    iovec *iov


cdef struct Slot:           # 24 bytes: the reap loop touches one per completion
    uint64_t user_data      # the caller's value, returned with the completion
    Hold *hold              # what keeps the request's memory alive, or NULL
    bint live


cdef struct SubmitQueue:
    # The kernel's words (khead, ktail, kflags) and our local copy of the tail,
    # published once per batch.
    io_uring_sqe *sqes
    uint32_t *khead
    uint32_t *ktail
    uint32_t *kflags
    uint32_t mask, entries
    uint32_t tail           # next SQE to fill; local, free-running
    uint32_t published      # the tail value we last stored for the kernel
    uint32_t chain_start    # first SQE of the open chain, while chain_open
    bint chain_open         # the last prepared SQE carries a link flag


cdef struct CompletionQueue:
    uint32_t *khead
    uint32_t *ktail
    uint32_t *koverflow
    io_uring_cqe *cqes
    uint32_t mask, entries


cdef struct SlotTable:
    # One slot per request the ring may have outstanding (as many as CQ entries).
    Slot *slots
    uint32_t n
    uint32_t *free_stack    # indices of free slots; free_top of them
    uint32_t free_top
    uint64_t seq            # requests prepared so far
    uint64_t *seqs          # per slot: its request's seq (generation; prep_cancel's age)
    vy_timespec *ts         # per slot: prep_timeout's timespec, stable meanwhile
    Hold **released         # holds whose last request a reap completed
    uint32_t nreleased


cdef struct Mappings:
    void *sq
    size_t sq_len
    void *cq                # == sq with IORING_FEAT_SINGLE_MMAP
    size_t cq_len
    size_t sqes_len


cdef struct RingCore:
    int fd
    uint32_t setup_flags, features
    int ring_index          # registered ring fd (-1: none), valid in ring_thread only
    uint64_t ring_thread
    int32_t internal_res    # res of the engine's own last cancel
    uint64_t *scratch_ud    # one per slot: completions are reaped through these
    int32_t *scratch_res
    uint32_t *scratch_flags
    bint inherited          # a forked child's copy of the parent's tables: never checked
    SubmitQueue sq
    CompletionQueue cq
    SlotTable st
    Mappings maps


cdef struct Claim:
    # The SQ and slot allocation state, copied into locals for a batch: the compiler
    # keeps them in registers instead of reloading the core after every SQE write.
    io_uring_sqe *sqes
    Slot *slots
    uint32_t *free_stack
    uint64_t *seqs
    uint32_t sq_mask
    uint32_t tail           # next SQE to fill
    uint32_t free_top       # free slots on the stack
    uint64_t seq


cdef struct Reclaim:
    # The reap side's counterpart of Claim: slots go back on the free stack, and a
    # hold whose last request completed is queued for release under the GIL.
    Slot *slots
    uint32_t *free_stack
    uint32_t free_top
    Hold **released
    uint32_t nreleased


# ---- the submission queue ---------------------------------------------------------

cdef inline uint32_t sq_pending(RingCore *r) noexcept nogil:
    # Acquire pairs with the kernel's store-release of the SQ head once it has
    # consumed the SQEs: only then may their slots be reused.
    return r.sq.tail - vy_load_acquire(r.sq.khead)


cdef inline void sq_publish_to(RingCore *r, uint32_t end) noexcept nogil:
    if r.sq.published != end:
        # Release: every SQE written above is visible before the kernel sees the new
        # tail; pairs with the kernel's load-acquire of the SQ tail. Once per batch,
        # never per SQE.
        vy_store_release(r.sq.ktail, end)
        r.sq.published = end


cdef inline void sq_publish(RingCore *r) noexcept nogil:
    """Publish every prepared SQE: a submission boundary, where the kernel ends an
    open chain."""
    r.sq.chain_open = False
    sq_publish_to(r, r.sq.tail)


cdef inline uint32_t sqpoll_wakeup(RingCore *r) noexcept nogil:
    """IORING_ENTER_SQ_WAKEUP when the SQPOLL thread sleeps, else 0. Call after
    publishing the tail."""
    # Full fence between our tail store and the NEED_WAKEUP load: without it the
    # kernel thread can go to sleep after missing our new tail while we miss its
    # flag, and the SQEs sit unsubmitted (a lost wakeup; liburing's
    # sq_ring_needs_enter). Pairs with the smp_mb() the SQPOLL thread makes after
    # setting the flag and before its last look at the SQ tail.
    vy_fence_full()
    if vy_load_relaxed(r.sq.kflags) & IORING_SQ_NEED_WAKEUP:
        return IORING_ENTER_SQ_WAKEUP
    return 0


cdef inline void track_chain(RingCore *r, uint32_t first, uint32_t end) noexcept nogil:
    """Follow the open chain over the SQEs first..end-1, just written: it is open while
    the last one carries a link flag, and starts after the last SQE that carries none
    (or where it started, when all of these extend it)."""
    cdef uint8_t links = IOSQE_IO_LINK | IOSQE_IO_HARDLINK
    cdef uint32_t i = end
    if not (r.sq.sqes[(end - 1) & r.sq.mask].flags & links):
        r.sq.chain_open = False
        return
    while i != first and r.sq.sqes[(i - 1) & r.sq.mask].flags & links:
        i -= 1
    if i != first or not r.sq.chain_open:
        r.sq.chain_start = i
    r.sq.chain_open = True


cdef inline bint sq_push_internal(RingCore *r, uint32_t cancel_flags,
                                  uint64_t target) noexcept nogil:
    """Queue one of the engine's own ASYNC_CANCEL requests (no slot: its completion
    sets internal_res), filled completely before the tail store publishes it (the
    SQPOLL thread may read it at once). False when the SQ is full."""
    cdef io_uring_sqe *sqe
    if r.sq.entries - sq_pending(r) == 0:
        return False
    sqe = &r.sq.sqes[r.sq.tail & r.sq.mask]
    memset(sqe, 0, sizeof(io_uring_sqe))
    sqe.opcode = IORING_OP_ASYNC_CANCEL
    sqe.cancel_flags = cancel_flags
    sqe.addr = target
    sqe.user_data = INTERNAL_USER_DATA
    r.sq.tail += 1
    sq_publish(r)
    return True


# ---- the completion queue ---------------------------------------------------------

cdef inline uint32_t cq_ready(RingCore *r) noexcept nogil:
    # Acquire pairs with the kernel's store-release of the CQ tail, which it makes
    # after writing the CQEs: the CQEs below the tail are complete.
    return vy_load_acquire(r.cq.ktail) - vy_load_relaxed(r.cq.khead)


cdef inline bint cq_needs_flush(RingCore *r) noexcept nogil:
    # Relaxed: a hint re-checked by the kernel inside io_uring_enter.
    if vy_load_relaxed(r.sq.kflags) & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN):
        return True
    # DEFER_TASKRUN completions are posted only when we enter with GETEVENTS.
    return (r.setup_flags & IORING_SETUP_DEFER_TASKRUN) != 0 and \
        slots_used(r) > sq_pending(r)


cdef inline uint32_t cq_reap(RingCore *r, uint64_t *ud, int32_t *res, uint32_t *flg,
                             uint32_t maxn) noexcept nogil:
    """Copy up to `maxn` CQEs out (flg may be NULL), map them to their slots and free
    the slots; a hold whose last request completed is queued in r.st.released."""
    cdef uint32_t head = vy_load_relaxed(r.cq.khead)   # only we store it
    # Acquire pairs with the kernel's store-release of the CQ tail.
    cdef uint32_t tail = vy_load_acquire(r.cq.ktail)
    cdef uint32_t n = 0
    cdef io_uring_cqe *cqe
    cdef uint32_t idx
    cdef Reclaim c
    reclaim_begin(r, &c)
    while head != tail and n < maxn:
        cqe = &r.cq.cqes[head & r.cq.mask]
        head += 1
        # Never index with a value read back from shared memory unchecked.
        idx = slot_of(r, cqe.user_data)
        if idx == NO_SLOT:
            if cqe.user_data == INTERNAL_USER_DATA:
                r.internal_res = cqe.res
            continue
        ud[n] = c.slots[idx].user_data
        res[n] = cqe.res
        if flg != NULL:
            flg[n] = cqe.flags
        n += 1
        reclaim_slot(&c, idx)
    reclaim_end(r, &c)
    # Release: the CQEs are copied out before the kernel may reuse their entries;
    # pairs with the kernel's load-acquire of the CQ head. Once per reap.
    vy_store_release(r.cq.khead, head)
    return n


# ---- the slot table ---------------------------------------------------------------

cdef inline uint64_t kernel_user_data(uint32_t idx, uint64_t seq) noexcept nogil:
    """The kernel user_data of the request with sequence number `seq` in slot `idx`:
    the low 32 bits name the slot, the high 32 bits its generation."""
    return <uint64_t>idx | (seq << 32)


cdef inline uint32_t slot_of(RingCore *r, uint64_t kernel_ud) noexcept nogil:
    """The live slot a kernel user_data names, or NO_SLOT: the index is masked and
    bounds-checked, and its generation must be the slot's current one."""
    cdef uint32_t idx = <uint32_t>kernel_ud            # the low 32 bits
    if idx >= r.st.n or not r.st.slots[idx].live or \
            <uint32_t>r.st.seqs[idx] != <uint32_t>(kernel_ud >> 32):
        return NO_SLOT
    return idx


cdef inline uint32_t slots_used(RingCore *r) noexcept nogil:
    """Slots owned by requests: prepared, in flight, or completed but not reaped."""
    return r.st.n - r.st.free_top


cdef inline void claim_begin(RingCore *r, Claim *c) noexcept nogil:
    c.sqes = r.sq.sqes
    c.slots = r.st.slots
    c.free_stack = r.st.free_stack
    c.seqs = r.st.seqs
    c.sq_mask = r.sq.mask
    c.tail = r.sq.tail
    c.free_top = r.st.free_top
    c.seq = r.st.seq


cdef inline io_uring_sqe *claim_sqe(Claim *c, uint64_t user_data, Hold *hold) noexcept nogil:
    """Claim a slot and a zeroed SQE; the caller checked there is room for both."""
    c.free_top -= 1
    cdef uint32_t idx = c.free_stack[c.free_top]
    cdef Slot *slot = &c.slots[idx]
    cdef io_uring_sqe *sqe = &c.sqes[c.tail & c.sq_mask]
    c.tail += 1
    slot.live = True
    slot.user_data = user_data
    slot.hold = hold
    c.seqs[idx] = c.seq
    # Every SQE starts zeroed: a stale flag (IOSQE_FIXED_FILE) or field from an
    # earlier request must never leak into this one.
    memset(sqe, 0, sizeof(io_uring_sqe))
    sqe.user_data = kernel_user_data(idx, c.seq)
    c.seq += 1
    return sqe


cdef inline void claim_end(RingCore *r, Claim *c) noexcept nogil:
    if c.tail != r.sq.tail:
        track_chain(r, r.sq.tail, c.tail)
    r.sq.tail = c.tail
    r.st.free_top = c.free_top
    r.st.seq = c.seq
    if VY_DEBUG:
        check_invariants(r, "fill")


cdef inline void reclaim_begin(RingCore *r, Reclaim *c) noexcept nogil:
    c.slots = r.st.slots
    c.free_stack = r.st.free_stack
    c.free_top = r.st.free_top
    c.released = r.st.released
    c.nreleased = r.st.nreleased


cdef inline void reclaim_slot(Reclaim *c, uint32_t idx) noexcept nogil:
    cdef Slot *slot = &c.slots[idx]
    cdef Hold *hold = slot.hold
    if hold != NULL:
        hold.refs -= 1
        if hold.refs == 0:
            c.released[c.nreleased] = hold
            c.nreleased += 1
        slot.hold = NULL
    slot.live = False
    c.free_stack[c.free_top] = idx
    c.free_top += 1


cdef inline void reclaim_end(RingCore *r, Reclaim *c) noexcept nogil:
    r.st.free_top = c.free_top
    r.st.nreleased = c.nreleased
    if VY_DEBUG:
        check_invariants(r, "reap")


cdef inline void free_slot(RingCore *r, uint32_t idx) noexcept nogil:
    """Give one slot back (outside the reap loop)."""
    cdef Reclaim c
    reclaim_begin(r, &c)
    reclaim_slot(&c, idx)
    reclaim_end(r, &c)


cdef inline void check_invariants(RingCore *r, const char *where) noexcept nogil:
    """Debug builds: the slot tables agree with themselves and with the SQ. A
    violation is a bug in this engine; abort with what broke, where."""
    cdef uint32_t i, live = 0
    cdef const char *broken = NULL
    if r.inherited:
        # A forked child's tables are a copy taken at any instant of the parent's
        # threads (mid-reap, say) and its SQ head is the parent's: the child only
        # tears them down, and nothing in them need agree.
        return
    if r.st.free_top > r.st.n:
        broken = "more free slots than slots"
    elif r.sq.tail - r.sq.published > r.sq.entries or sq_pending(r) > r.sq.entries:
        broken = "more SQEs pending than the SQ holds"
    elif r.sq.chain_open and (r.sq.tail - r.sq.chain_start > r.sq.entries or
                              r.sq.chain_start - r.sq.published >
                              r.sq.tail - r.sq.published):
        broken = "the open chain is longer than the SQ, or partly published"
    else:
        for i in range(r.st.free_top):
            if r.st.free_stack[i] >= r.st.n or r.st.slots[r.st.free_stack[i]].live:
                broken = "a free-stack entry is out of range or names a live slot"
                break
        for i in range(r.st.n):
            live += r.st.slots[i].live
        if broken == NULL and live != r.st.n - r.st.free_top:
            broken = "live slots do not match the slots in use"
        i = r.sq.published
        while broken == NULL and i != r.sq.tail:
            if slot_of(r, r.sq.sqes[i & r.sq.mask].user_data) == NO_SLOT:
                broken = "an unpublished SQE names no live slot of its generation"
            i += 1
    if broken != NULL:
        fprintf(stderr, b"vyre_uring invariant broken after %s: %s\n", where, broken)
        abort()
