# Process state (process.h): only vyre_uring._ring cimports this; see the header.
from libc.stdint cimport uint64_t

cdef extern from "process.h" nogil:
    int vy_install_atfork()
    unsigned long vy_fork_gen()
    uint64_t vy_thread_token()
