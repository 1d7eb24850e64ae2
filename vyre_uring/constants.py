"""The io_uring constants that vyre_uring's public API takes or reports, as plain
ints. They are the kernel's ABI (<linux/io_uring.h>), which never changes a value
once released; the ring module checks at import that each equals what it was
compiled against."""

# IOSQE_*: flags of one request (the `flags` of the prep methods).
SQE_FIXED_FILE = 1 << 0      # fd is an index into the ring's registered files
SQE_IO_DRAIN = 1 << 1        # start only after every earlier request completed
SQE_IO_LINK = 1 << 2         # the next request starts after this one succeeds
SQE_IO_HARDLINK = 1 << 3     # ...after this one completes, failed or not
SQE_ASYNC = 1 << 4           # skip the inline attempt: go to a kernel worker

# prep_openat(file_index=FILE_INDEX_ALLOC): the kernel picks a free slot of the
# registered file table and returns it (IORING_FILE_INDEX_ALLOC, Linux 5.19).
FILE_INDEX_ALLOC = -1

# IORING_SETUP_*: Ring.setup_flags.
SETUP_SQPOLL = 1 << 1
SETUP_COOP_TASKRUN = 1 << 8
SETUP_SINGLE_ISSUER = 1 << 12
SETUP_DEFER_TASKRUN = 1 << 13

# IORING_FEAT_*: Ring.features.
FEAT_SINGLE_MMAP = 1 << 0
FEAT_NODROP = 1 << 1
FEAT_EXT_ARG = 1 << 8
