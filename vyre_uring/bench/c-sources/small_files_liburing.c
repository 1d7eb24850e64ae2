/* The C reference for many small files: paths from stdin (one per line), read in
 * batches through liburing: BATCH openat, then BATCH reads of up to 64 KiB, then
 * BATCH closes, each phase one submit-and-wait. With THREADS > 1 each thread has its
 * own ring and a contiguous share of the paths. With "direct" the files are opened
 * into the ring's own file table (IORING_FILE_INDEX_ALLOC, Linux 5.19), read as
 * fixed files and closed there: the threads then share no process fd table.
 * With "sized" (plain fds) each open fd is fstat'ed before its read, the sizing and
 * regular-file check a reader that returns each file's exact bytes makes.
 * By default every batch reads into one reused buffer of BATCH slots, which stays in
 * the CPU's caches. With ARENA_SLOT > 0 each file keeps its result instead: file i
 * is read (at most ARENA_SLOT bytes) into slot i of one arena, faulted in before the
 * clock starts, as a caller's reused destination buffer is.
 * Usage: small_files_liburing BATCH [THREADS [direct|plain|sized [ARENA_SLOT]]]
 * Prints files_per_second (timing only the reading, not loading the path list). */
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define SLOT (64 * 1024)

static char **paths;
static size_t count;
static unsigned batch = 64, threads = 1;
static int direct, sized;
static size_t arena_slot;
static char *arena;
static unsigned long long total_bytes;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int run_phase(struct io_uring *ring, unsigned n, int *res)
{
    int ret = io_uring_submit_and_wait(ring, n);
    if (ret < 0)
        return ret;
    for (unsigned seen = 0; seen < n;) {
        struct io_uring_cqe *cqe;
        ret = io_uring_wait_cqe(ring, &cqe);
        if (ret < 0)
            return ret;
        res[cqe->user_data] = cqe->res;
        io_uring_cqe_seen(ring, cqe);
        seen++;
    }
    return 0;
}

static void *read_share(void *arg)
{
    size_t id = (size_t)arg, lo = count * id / threads, hi = count * (id + 1) / threads;
    struct io_uring ring;
    if (io_uring_queue_init(batch, &ring, 0) < 0 ||
        (direct && io_uring_register_files_sparse(&ring, batch) < 0)) {
        fprintf(stderr, "io_uring set-up failed\n");
        exit(1);
    }
    char *buf = arena ? NULL : aligned_alloc(4096, (size_t)batch * SLOT);
    int *fds = malloc(batch * sizeof(int)), *res = malloc(batch * sizeof(int));
    unsigned long long bytes = 0;
    for (size_t start = lo; start < hi; start += batch) {
        unsigned n = hi - start < batch ? (unsigned)(hi - start) : batch;
        for (unsigned i = 0; i < n; i++) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
            if (direct)     /* liburing adds 1: ALLOC - 1 asks for any free slot */
                io_uring_prep_openat_direct(sqe, AT_FDCWD, paths[start + i], O_RDONLY, 0,
                                            IORING_FILE_INDEX_ALLOC - 1);
            else
                io_uring_prep_openat(sqe, AT_FDCWD, paths[start + i], O_RDONLY | O_CLOEXEC, 0);
            sqe->user_data = i;
        }
        if (run_phase(&ring, n, fds) < 0)
            exit(1);
        for (unsigned i = 0; i < n; i++) {
            struct stat st;
            if (fds[i] < 0) {
                fprintf(stderr, "open failed: %s\n", strerror(-fds[i]));
                exit(1);
            }
            if (sized && (fstat(fds[i], &st) != 0 || !S_ISREG(st.st_mode))) {
                fprintf(stderr, "not a regular file: %s\n", paths[start + i]);
                exit(1);
            }
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
            if (arena)
                io_uring_prep_read(sqe, fds[i], arena + (start + i) * arena_slot,
                                   (unsigned)arena_slot, 0);
            else
                io_uring_prep_read(sqe, fds[i], buf + (size_t)i * SLOT, SLOT, 0);
            if (direct)
                sqe->flags |= IOSQE_FIXED_FILE;
            sqe->user_data = i;
        }
        if (run_phase(&ring, n, res) < 0)
            exit(1);
        for (unsigned i = 0; i < n; i++) {
            bytes += res[i] > 0 ? res[i] : 0;
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
            if (direct)
                io_uring_prep_close_direct(sqe, fds[i]);
            else
                io_uring_prep_close(sqe, fds[i]);
            sqe->user_data = i;
        }
        if (run_phase(&ring, n, res) < 0)
            exit(1);
    }
    __atomic_add_fetch(&total_bytes, bytes, __ATOMIC_RELAXED);
    return NULL;
}

int main(int argc, char **argv)
{
    batch = argc > 1 ? (unsigned)atoi(argv[1]) : 64;
    threads = argc > 2 ? (unsigned)atoi(argv[2]) : 1;
    direct = argc > 3 && strcmp(argv[3], "direct") == 0;
    sized = argc > 3 && strcmp(argv[3], "sized") == 0;
    arena_slot = argc > 4 ? (size_t)strtoull(argv[4], NULL, 10) : 0;
    if (batch == 0 || batch > 1024 || threads == 0 || threads > 1024 ||
        arena_slot > SLOT) {
        fprintf(stderr, "bad batch, thread count or arena slot\n");
        return 1;
    }
    size_t cap = 1024;
    paths = malloc(cap * sizeof(char *));
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (count == cap)
            paths = realloc(paths, (cap *= 2) * sizeof(char *));
        paths[count++] = strdup(line);
    }
    if (arena_slot) {
        arena = aligned_alloc(4096, (count * arena_slot + 4095) / 4096 * 4096 + 4096);
        if (!arena) {
            fprintf(stderr, "no memory for the arena\n");
            return 1;
        }
        memset(arena, 1, count * arena_slot);
    }
    pthread_t *tid = malloc(threads * sizeof(pthread_t));
    double t0 = now();
    for (size_t i = 0; i < threads; i++)
        pthread_create(&tid[i], NULL, read_share, (void *)i);
    for (size_t i = 0; i < threads; i++)
        pthread_join(tid[i], NULL);
    double elapsed = now() - t0;
    fprintf(stderr, "bytes %llu\n", total_bytes);
    printf("%.0f\n", count / elapsed);
    return 0;
}
