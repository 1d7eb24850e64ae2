# The kernel ABI of io_uring, declared extern-only: partial structs listing just the
# fields we use (the C compiler sees the real layouts), and the constants.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t

cdef extern from "uring_abi.h" nogil:
    struct io_sqring_offsets:
        uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array

    struct io_cqring_offsets:
        uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags

    struct io_uring_params:
        uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle
        uint32_t features, wq_fd
        io_sqring_offsets sq_off
        io_cqring_offsets cq_off

    struct io_uring_sqe:
        uint8_t opcode
        uint8_t flags
        uint16_t ioprio
        int32_t fd
        uint64_t off
        uint64_t addr
        uint32_t len
        uint32_t rw_flags
        uint32_t fsync_flags
        uint32_t timeout_flags
        uint32_t cancel_flags
        uint32_t open_flags
        uint32_t statx_flags
        uint64_t user_data
        uint16_t buf_index
        uint32_t file_index

    struct io_uring_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags

    struct io_uring_probe_op:
        uint8_t op
        uint16_t flags

    struct io_uring_probe:
        uint8_t last_op
        uint8_t ops_len
        io_uring_probe_op ops[0]

    struct io_uring_restriction:
        uint16_t opcode
        uint8_t register_op         # (these three share a union in the kernel's
        uint8_t sqe_op              #  header: set one, by opcode)
        uint8_t sqe_flags

    struct io_uring_files_update:
        uint32_t offset
        uint64_t fds

    struct vy_getevents_arg:
        uint64_t sigmask
        uint32_t sigmask_sz
        uint64_t ts

    struct vy_rsrc_update:
        uint32_t offset
        uint64_t data

    struct vy_timespec:
        int64_t tv_sec
        long long tv_nsec

    struct iovec:
        void *iov_base
        size_t iov_len

    # opcodes (the kernel header's enum: READ_FIXED is 4, READ is 22)
    enum:
        IORING_OP_NOP, IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_FSYNC
        IORING_OP_READ_FIXED, IORING_OP_WRITE_FIXED, IORING_OP_POLL_ADD
        IORING_OP_POLL_REMOVE, IORING_OP_SYNC_FILE_RANGE, IORING_OP_SENDMSG
        IORING_OP_RECVMSG, IORING_OP_TIMEOUT, IORING_OP_TIMEOUT_REMOVE
        IORING_OP_ACCEPT, IORING_OP_ASYNC_CANCEL, IORING_OP_LINK_TIMEOUT
        IORING_OP_CONNECT, IORING_OP_FALLOCATE, IORING_OP_OPENAT, IORING_OP_CLOSE
        IORING_OP_FILES_UPDATE, IORING_OP_STATX, IORING_OP_READ, IORING_OP_WRITE
        IORING_OP_FADVISE, IORING_OP_MADVISE, IORING_OP_SEND, IORING_OP_RECV
        IORING_OP_OPENAT2, IORING_OP_EPOLL_CTL, IORING_OP_SPLICE
        IORING_OP_PROVIDE_BUFFERS, IORING_OP_REMOVE_BUFFERS, IORING_OP_TEE
        IORING_OP_SHUTDOWN, IORING_OP_RENAMEAT, IORING_OP_UNLINKAT
        IORING_OP_MKDIRAT, IORING_OP_SYMLINKAT, IORING_OP_LINKAT
        IORING_OP_MSG_RING, IORING_OP_LAST

    enum:
        IOSQE_FIXED_FILE, IOSQE_IO_DRAIN, IOSQE_IO_LINK, IOSQE_IO_HARDLINK
        IOSQE_ASYNC, IOSQE_BUFFER_SELECT, IOSQE_CQE_SKIP_SUCCESS

        IORING_SETUP_IOPOLL, IORING_SETUP_SQPOLL, IORING_SETUP_SQ_AFF
        IORING_SETUP_CQSIZE, IORING_SETUP_SUBMIT_ALL, IORING_SETUP_COOP_TASKRUN
        IORING_SETUP_TASKRUN_FLAG, IORING_SETUP_SINGLE_ISSUER
        IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_R_DISABLED

        IORING_FEAT_SINGLE_MMAP, IORING_FEAT_NODROP, IORING_FEAT_EXT_ARG

        IORING_SQ_NEED_WAKEUP, IORING_SQ_CQ_OVERFLOW, IORING_SQ_TASKRUN

        IORING_ENTER_GETEVENTS, IORING_ENTER_SQ_WAKEUP, IORING_ENTER_SQ_WAIT
        IORING_ENTER_EXT_ARG, IORING_ENTER_REGISTERED_RING

        IORING_OFF_SQ_RING, IORING_OFF_CQ_RING, IORING_OFF_SQES

        IORING_REGISTER_BUFFERS, IORING_UNREGISTER_BUFFERS
        IORING_REGISTER_FILES, IORING_UNREGISTER_FILES
        IORING_REGISTER_FILES_UPDATE, IORING_REGISTER_PROBE
        IORING_REGISTER_RING_FDS, IORING_UNREGISTER_RING_FDS
        IORING_REGISTER_EVENTFD, IORING_UNREGISTER_EVENTFD
        IORING_REGISTER_RESTRICTIONS, IORING_REGISTER_ENABLE_RINGS
        IORING_RESTRICTION_REGISTER_OP, IORING_RESTRICTION_SQE_OP
        IORING_RESTRICTION_SQE_FLAGS_ALLOWED

        IORING_FSYNC_DATASYNC, IORING_TIMEOUT_ABS
        IORING_ASYNC_CANCEL_ALL, IORING_ASYNC_CANCEL_ANY
        IORING_FILE_INDEX_ALLOC, IO_URING_OP_SUPPORTED

    bint VY_DEBUG

    uint32_t vy_load_acquire(const uint32_t *p)
    uint32_t vy_load_relaxed(const uint32_t *p)
    void vy_store_release(uint32_t *p, uint32_t v)
    void vy_fence_full()
    bint vy_try_lock(int *flag)
    void vy_unlock(int *flag)

    int vy_io_uring_setup(unsigned entries, io_uring_params *p)
    int vy_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete,
                          unsigned flags, void *arg, size_t argsz)
    int vy_io_uring_register(int fd, unsigned opcode, const void *arg, unsigned nr_args)
    void *vy_mmap_ring(int fd, size_t length, uint64_t offset, int *err)
    int vy_poll_in(int fd, int timeout_ms)
    double vy_monotonic()

    const char *VYRE_CYTHON_VERSION
    void *MAP_FAILED
    int munmap(void *addr, size_t length)
    int close(int fd)
    int AT_FDCWD

cdef extern from "Python.h":
    # PyObject_GetBuffer declared without Cython's "except -1": the caller checks the
    # result, so the hot path sets up no exception handling.
    int _get_buffer_noraise "PyObject_GetBuffer" (object obj, Py_buffer *view, int flags)
    # Likewise: the caller turns a failure into an error that names the argument.
    unsigned long long _as_u64_noraise "PyLong_AsUnsignedLongLong" (object v)
    # Given an int, it cannot fail: a value past int64 sets *overflow instead.
    long long _as_i64_overflow "PyLong_AsLongLongAndOverflow" (object v, int *overflow)

cdef extern from "<linux/stat.h>" nogil:
    struct statx_timestamp:
        int64_t tv_sec
        uint32_t tv_nsec

    struct statx:
        uint32_t stx_mask, stx_blksize, stx_nlink, stx_uid, stx_gid
        uint64_t stx_attributes, stx_ino, stx_size, stx_blocks
        uint16_t stx_mode
        statx_timestamp stx_mtime
        uint32_t stx_dev_major, stx_dev_minor

    enum:
        STATX_BASIC_STATS

cdef extern from "uring_abi.h" nogil:
    int vy_statx(const char *path, statx *out)
