# The GPU staging pipeline's lanes (vyre_uring._staging), in C.
#
# A StagePlan holds every read request of one pipeline call, in private copies, and
# the counter its lanes claim loads from (a load: the requests that fill one slot).
# run_stage_lane runs one lane on one ring, without the GIL: for each load it
# claims, it waits until its slot's previous copies completed (the slot's event),
# reads the load into the slot (a job of this engine: short reads resubmitted, EOF
# respected), queues the copies of what was read and records the slot's event. The
# GIL is taken back only for signals, errors and the end: a lane per core keeps
# every core reading, where lanes in Python queued for the GIL at each load.
#
# The copy side is three functions with the CUDA driver's signatures
# (cuEventSynchronize, cuMemcpyHtoDAsync_v2, cuEventRecord), which return 0 or an
# error code: libcuda's own (vyre_uring._cuda), or a host stand-in in the tests.

ctypedef int (*event_fn)(void *event) noexcept nogil
ctypedef int (*copy_fn)(uint64_t dest, const void *src, size_t nbytes,
                        void *stream) noexcept nogil
ctypedef int (*record_fn)(void *event, void *stream) noexcept nogil

cdef enum:
    STAGE_SLOTS_MAX = 8
    STAGE_READ_FAILED = 16      # _lane_steps: a read failed (LaneState.read_err)
    STAGE_COPY_FAILED = 17      # a copy-side call failed (LaneState.copy_code)


cdef struct StageData:
    Py_ssize_t nreq, nloads, most   # most: the most requests in one load
    int32_t *fds                    # per file
    uint8_t *pread_only             # per file: read with pread (pread_only)
    int64_t *file                   # per request: its file's index
    int64_t *offset                 # its first byte in the file
    int64_t *length
    int64_t *slot_offset            # where in the slot it lands
    int64_t *dest_offset            # where in the destination its bytes go
    int64_t *load_first             # per load: its first request (nloads + 1 entries)
    int64_t *got                    # per request: bytes read (the caller's array; each
                                    # entry one lane's, read after run_call joined them)
    Py_ssize_t slot_bytes
    int slots                       # slots per lane
    uint64_t dest                   # the destination's (device) address
    int64_t next_load               # atomic (_claim_load): the next load a lane claims
    int failed                      # atomic flag: a lane failed, the others stop (relaxed:
                                    # it publishes nothing, counters.h)


@cython.final
cdef class StagePlan:
    """The read requests of one pipeline call, checked and copied: request q reads
    requests.length[q] bytes at requests.offset[q] of file requests.file[q] (fds[f],
    named names[f]) into its slot at requests.slot_offset[q], and its bytes go to
    dest + requests.dest_offset[q]; load k is requests load_first[k] up to
    load_first[k + 1]. Every request must lie inside a slot of `slot_bytes` and
    inside the destination's `dest_nbytes`. Lanes write the bytes each request read
    into `got` (an array('q') with one entry per request)."""
    cdef StageData d
    cdef IntCopy _file, _offset, _length, _slot_offset, _dest_offset, _load_first, _fds
    cdef Py_buffer _got
    cdef bint _has_got
    cdef readonly object names, got

    def __cinit__(self, requests, fds, names, got, Py_ssize_t slot_bytes, int slots,
                  uint64_t dest, int64_t dest_nbytes):
        cdef Py_ssize_t i
        self.names, self.got = names, got
        int_copy(&self._file, requests.file, "file", False)
        int_copy(&self._offset, requests.offset, "offset", False)
        int_copy(&self._length, requests.length, "length", False)
        int_copy(&self._slot_offset, requests.slot_offset, "slot_offset", False)
        int_copy(&self._dest_offset, requests.dest_offset, "dest_offset", False)
        int_copy(&self._load_first, requests.load_first, "load_first", False)
        int_copy(&self._fds, fds, "fds", False)
        if len(names) != self._fds.n:
            raise ValueError(f"{len(names)} names for {self._fds.n} files")
        if not 1 <= slots <= STAGE_SLOTS_MAX or not 0 < slot_bytes <= PY_SSIZE_T_MAX // slots:
            raise ValueError(f"a lane has 1 to {STAGE_SLOTS_MAX} slots of at least a "
                             f"byte, all within an address space, not {slots} of "
                             f"{slot_bytes}")
        self.d.nreq = self._offset.n
        if not (self._file.n == self._length.n == self._slot_offset.n ==
                self._dest_offset.n == self.d.nreq):
            raise ValueError("every request array must have one entry per request")
        self.d.nloads = self._load_first.n - 1
        self.d.slot_bytes = slot_bytes
        self.d.slots = slots
        self.d.dest = dest
        self.d.file, self.d.offset, self.d.length = self._file.v, self._offset.v, self._length.v
        self.d.slot_offset, self.d.dest_offset = self._slot_offset.v, self._dest_offset.v
        self.d.load_first = self._load_first.v
        self._check(dest_nbytes)
        self.d.fds = <int32_t *>malloc(max(self._fds.n, 1) * sizeof(int32_t))
        self.d.pread_only = <uint8_t *>malloc(max(self._fds.n, 1))
        if self.d.fds == NULL or self.d.pread_only == NULL:
            raise MemoryError()
        for i in range(self._fds.n):
            if not 0 <= self._fds.v[i] <= 0x7FFFFFFF:
                raise ValueError(f"fds[{i}] is {self._fds.v[i]}, not a file descriptor")
            self.d.fds[i] = <int32_t>self._fds.v[i]
            self.d.pread_only[i] = pread_only(self.d.fds[i])
        PyObject_GetBuffer(got, &self._got, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS)
        self._has_got = True
        if self._got.format == NULL or self._got.format[0] != b"q" or \
                self._got.len != self.d.nreq * 8:
            raise ValueError(f"got must be an array('q') of {self.d.nreq} entries")
        self.d.got = <int64_t *>self._got.buf

    cdef int _check(self, int64_t dest_nbytes) except -1:
        """Every load a run of requests, every request inside a slot, the destination
        and an open file: what the lanes read and copy is only what was checked."""
        cdef StageData *d = &self.d
        cdef Py_ssize_t k, q
        if d.nloads < 0 or d.load_first[0] != 0 or d.load_first[d.nloads] != d.nreq:
            raise ValueError("load_first must run from 0 to the number of requests")
        for k in range(d.nloads):
            if d.load_first[k + 1] < d.load_first[k]:
                raise ValueError(f"load {k} ends before it starts")
            d.most = max(d.most, <Py_ssize_t>(d.load_first[k + 1] - d.load_first[k]))
        for q in range(d.nreq):
            if not 0 <= d.file[q] < self._fds.n or d.offset[q] < 0 or \
                    not span_fits(d.slot_offset[q], d.length[q], d.slot_bytes) or \
                    not span_fits(d.dest_offset[q], d.length[q], dest_nbytes):
                raise ValueError(f"request {q} (file {d.file[q]}, offset {d.offset[q]}, "
                                 f"length {d.length[q]}, slot offset {d.slot_offset[q]}, "
                                 f"destination offset {d.dest_offset[q]}) is outside "
                                 f"its file list, slot or destination")
        return 0

    def __dealloc__(self):
        int_copy_free(&self._file)
        int_copy_free(&self._offset)
        int_copy_free(&self._length)
        int_copy_free(&self._slot_offset)
        int_copy_free(&self._dest_offset)
        int_copy_free(&self._load_first)
        int_copy_free(&self._fds)
        free(self.d.fds)
        free(self.d.pread_only)
        if self._has_got:
            PyBuffer_Release(&self._got)

    @property
    def nloads(self):
        return self.d.nloads

    @property
    def slot_bytes(self):
        return self.d.slot_bytes

    @property
    def slots(self):
        return self.d.slots

    @property
    def dest(self):
        return self.d.dest

    @property
    def failed(self):
        return vy_flag_get(&self.d.failed)

    def fail(self):
        """A lane failed: the others take no further load."""
        vy_flag_set(&self.d.failed)

    @property
    def nfiles(self):
        return self._fds.n

    def fd(self, Py_ssize_t f):
        """The fd of file f, as checked."""
        if not 0 <= f < self._fds.n:
            raise IndexError(f"file {f} of {self._fds.n}")
        return self.d.fds[f]

    def load(self, Py_ssize_t k):
        """(first, end): the requests of load k."""
        if not 0 <= k < self.d.nloads:
            raise IndexError(f"load {k} of {self.d.nloads}")
        return self.d.load_first[k], self.d.load_first[k + 1]

    def request(self, Py_ssize_t q):
        """(fd, offset, length, slot_offset, dest_offset, file index) of request q, as
        checked: a Python lane reads the same values as the C ones."""
        if not 0 <= q < self.d.nreq:
            raise IndexError(f"request {q} of {self.d.nreq}")
        return (self.d.fds[self.d.file[q]], self.d.offset[q], self.d.length[q],
                self.d.slot_offset[q], self.d.dest_offset[q], self.d.file[q])

    def set_got(self, Py_ssize_t q, int64_t n):
        """Request q read n bytes (a Python lane's report)."""
        if not 0 <= q < self.d.nreq or not 0 <= n <= self.d.length[q]:
            raise ValueError(f"request {q} cannot have read {n} bytes")
        self.d.got[q] = n

    def lane_bytes(self):
        """The bytes of one lane's slots."""
        return self.d.slots * self.d.slot_bytes

    def claim(self):
        """The next load for a lane (a Python lane's; the C lanes claim in C): nloads
        or more when none is left."""
        return _claim_load(&self.d)


cdef inline int64_t _claim_load(StageData *d) noexcept nogil:
    """The next load, for one lane alone: a relaxed fetch-add (counters.h) pairs with
    nothing, as the plan it indexes was written before any lane started."""
    return vy_i64_add(&d.next_load, 1) - 1


cdef struct CopyFns:
    event_fn sync
    copy_fn copy
    record_fn record
    void *stream
    void *events[STAGE_SLOTS_MAX]   # one per slot
    int nevents


@cython.final
cdef class CopyOps:
    """A lane's copy side for run_stage_lane: the addresses of its three functions
    (see above), its stream and an event per slot (opaque handles), `fail(code,
    call)`, which raises the error of a failed call, and `keep`, whatever the
    functions need alive."""
    cdef CopyFns f
    cdef object fail, keep

    def __cinit__(self, size_t sync, size_t copy, size_t record, size_t stream, events,
                  fail, keep=None):
        cdef Py_ssize_t i
        if not (sync and copy and record):
            raise ValueError("the copy functions must be given")
        if not 1 <= len(events) <= STAGE_SLOTS_MAX:
            raise ValueError(f"1 to {STAGE_SLOTS_MAX} events, not {len(events)}")
        self.f.sync = <event_fn><void *>sync
        self.f.copy = <copy_fn><void *>copy
        self.f.record = <record_fn><void *>record
        self.f.stream = <void *>stream
        for i, event in enumerate(events):
            self.f.events[i] = <void *><size_t>event
        self.f.nevents = len(events)
        self.fail, self.keep = fail, keep


cdef struct LaneState:
    char *slots                     # this lane's first slot
    Py_ssize_t fixed_files          # files 0..fixed_files-1 are registered, each at its index
    int64_t k                       # the load in the slot, -1: none
    Py_ssize_t turn
    int s                           # its slot
    uint8_t recorded[STAGE_SLOTS_MAX]
    int copy_code                   # STAGE_COPY_FAILED: the code and the call
    const char *copy_call
    int64_t failed_request          # STAGE_READ_FAILED: the request and its errno
    int read_err


def run_stage_lane(ring, StagePlan plan not None, staging, Py_ssize_t base,
                   CopyOps ops not None, Py_ssize_t depth, stats, Py_ssize_t fixed_files=0,
                   Stop call=None):
    """Run one lane of `plan` on `ring` until no load is left, a lane failed or the
    call's Stop is set: its slots are plan.slots slots of plan.slot_bytes at `base`
    in `staging` (a writable buffer, exported for the lane's reads). The plan's
    files 0..fixed_files-1 are the ring's registered files at those indices (reads of
    a shared file then skip its reference count, a cache line every ring would
    contend on). Raises a failed
    read's OSError naming its file, the copy side's error, or KeyboardInterrupt;
    nothing this lane read is in flight then (its copies may be: the caller
    synchronizes its stream before the staging is reused or freed)."""
    ring_core(ring)                 # a Ring, or TypeError before any work
    cdef Job j
    cdef Hold *hold = NULL
    cdef LaneState st
    cdef RingCore *r
    cdef StageData *data
    cdef CopyFns *fns
    cdef int step
    memset(&j, 0, sizeof(Job))
    memset(&st, 0, sizeof(LaneState))
    st.k = -1
    st.fixed_files = min(max(fixed_files, 0), ring.registered_files)
    if ops.f.nevents < plan.d.slots:
        raise ValueError(f"the copy side has {ops.f.nevents} events for "
                         f"{plan.d.slots} slots")
    try:
        _job_alloc(&j, plan.d.most)
        j.depth = max(depth, 1)
        j.stop = &call.flag if call is not None else NULL
        hold = hold_object(staging, 1)
        hold.refs += 1              # the lane's own: the hold outlives every reap
        hold_export(hold, staging, True, "staging")
        if not span_fits(base, plan.lane_bytes(), hold.views[0].len):
            raise ValueError(f"{plan.d.slots} slots of {plan.d.slot_bytes} bytes at "
                             f"{base} do not fit the {hold.views[0].len}-byte staging")
        st.slots = <char *>hold.views[0].buf + base
        data, fns = &plan.d, &ops.f
        r = ring_acquire(ring)
        try:
            try:
                while True:
                    with nogil:
                        step = _lane_steps(r, &j, hold, data, fns, &st)
                    if step == STEP_DONE:
                        break
                    _lane_interrupted(step, &j, &st, plan, ops)
            except BaseException:
                vy_flag_set(&plan.d.failed)
                _job_abandon(ring, r, &j)
                raise
        finally:
            ring_release(ring)
        _add_stats(stats, &j)
    finally:
        if hold != NULL:
            _drop_job_ref(hold)
        _job_free(&j)


cdef int _lane_interrupted(int step, Job *j, LaneState *st, StagePlan plan,
                           CopyOps ops) except -1:
    """What the GIL does when a lane's nogil loop comes back before the end: run the
    signal handlers (Ctrl-C raises), or raise what stopped it."""
    if step == STEP_SIGNAL:
        PyErr_CheckSignals()
    elif step == STEP_STOP:
        raise CallStopped()
    elif step == STEP_ERROR:
        raise syscall_error("io_uring_enter", -j.enter_err)
    elif step == STAGE_READ_FAILED:
        raise path_error(st.read_err, plan.names[plan.d.file[st.failed_request]])
    elif step == STAGE_COPY_FAILED:
        ops.fail(st.copy_code, (<bytes>st.copy_call).decode())
        raise RuntimeError(f"{(<bytes>st.copy_call).decode()} failed: {st.copy_code}")
    else:
        raise UringError("internal error: a staging lane is waiting with nothing in "
                         "flight")
    return 0


cdef int _lane_steps(RingCore *r, Job *j, Hold *hold, StageData *d, CopyFns *f,
                     LaneState *st) noexcept nogil:
    """Claim, read, copy and record loads until none is left (STEP_DONE), or until
    something needs the GIL: a step of the read job's (a signal, the Stop, an
    error), a failed read or a failed copy-side call. A load interrupted by a signal
    resumes where it was."""
    cdef int step
    cdef Py_ssize_t i
    while True:
        if st.k < 0:
            if vy_flag_get(&d.failed):
                return STEP_DONE
            if j.stop != NULL and vy_flag_get(j.stop):
                return STEP_STOP
            st.k = _claim_load(d)
            if st.k >= d.nloads:
                st.k = -1
                return STEP_DONE
            st.s = <int>(st.turn % d.slots)
            st.turn += 1
            if st.recorded[st.s]:           # its last copies must be done: refill it
                st.copy_code = f.sync(f.events[st.s])
                if st.copy_code:
                    st.copy_call = "cuEventSynchronize"
                    return STAGE_COPY_FAILED
                st.recorded[st.s] = 0
            _load_job(j, d, st.k, st.slots + st.s * d.slot_bytes, st.fixed_files)
        step = _job_steps(r, j, hold)
        if step != STEP_DONE:
            return step
        for i in range(j.n):
            if j.err[i]:
                st.failed_request = d.load_first[st.k] + i
                st.read_err = j.err[i]
                return STAGE_READ_FAILED
            d.got[d.load_first[st.k] + i] = j.got[i]
        st.copy_code = _copy_load(j, d, f, st)
        if st.copy_code == 0:
            st.copy_code = f.record(f.events[st.s], f.stream)
            st.copy_call = "cuEventRecord"
        if st.copy_code:
            return STAGE_COPY_FAILED
        st.recorded[st.s] = 1
        st.k = -1


cdef void _load_job(Job *j, StageData *d, int64_t k, char *slot,
                    Py_ssize_t fixed_files) noexcept nogil:
    """The job reads load k into `slot`: its requests become the job's items (the
    job's arrays hold the largest load; nothing of the previous load is in flight).
    A load of one file registered with the ring (file f at index f, for f below
    `fixed_files`) names it by its index: no reference to take per read."""
    cdef int64_t first = d.load_first[k], q
    cdef Py_ssize_t i, n = <Py_ssize_t>(d.load_first[k + 1] - first)
    j.n = n
    j.left = n
    j.next_open = n                 # ranges of open files: nothing to open
    j.rq_head = j.rq_len = 0
    j.fixed_file = n > 0 and d.file[first] < fixed_files and _one_file(d, first, n)
    j.fixed_index = <int32_t>d.file[first] if j.fixed_file else 0
    for i in range(n):
        q = first + i
        j.fd[i] = d.fds[d.file[q]]
        j.sync[i] = d.pread_only[d.file[q]]
        j.off[i] = d.offset[q]
        j.want[i] = d.length[q]
        j.got[i] = 0
        j.err[i] = 0
        j.dest[i] = slot + d.slot_offset[q]
        _start_range(j, i)


cdef bint _one_file(StageData *d, int64_t first, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(1, n):
        if d.file[first + i] != d.file[first]:
            return False
    return True


cdef int _copy_load(Job *j, StageData *d, CopyFns *f, LaneState *st) noexcept nogil:
    """Queue the copies of what load st.k read: one per run of requests that are
    consecutive in the slot and in the destination (a short read ends a run).
    Returns 0, or the failed call's code."""
    cdef int64_t first = d.load_first[st.k], q, n
    cdef char *slot = st.slots + st.s * d.slot_bytes
    cdef Py_ssize_t i = 0, m
    cdef int code
    st.copy_call = "cuMemcpyHtoDAsync"
    while i < j.n:
        q = first + i
        n = j.got[i]
        m = i + 1
        while m < j.n and j.got[m - 1] == j.want[m - 1] and \
                d.slot_offset[first + m] == d.slot_offset[first + m - 1] + j.want[m - 1] and \
                d.dest_offset[first + m] == d.dest_offset[first + m - 1] + j.want[m - 1]:
            n += j.got[m]
            m += 1
        if n > 0:
            code = f.copy(d.dest + <uint64_t>d.dest_offset[q], slot + d.slot_offset[q],
                          <size_t>n, f.stream)
            if code:
                return code
        i = m
    return 0
