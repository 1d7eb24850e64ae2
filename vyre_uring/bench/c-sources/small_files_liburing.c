/* The C reference for many small files: paths from stdin (one per line), read in
 * batches through liburing: BATCH openat, then BATCH reads of up to 64 KiB, then
 * BATCH closes, each phase one submit-and-wait. Usage: small_files_liburing BATCH
 * Prints files_per_second (timing only the reading, not loading the path list). */
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOT (64 * 1024)

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

int main(int argc, char **argv)
{
    unsigned batch = argc > 1 ? (unsigned)atoi(argv[1]) : 64;
    size_t cap = 1024, count = 0;
    char **paths = malloc(cap * sizeof(char *));
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (count == cap)
            paths = realloc(paths, (cap *= 2) * sizeof(char *));
        paths[count++] = strdup(line);
    }
    struct io_uring ring;
    if (batch == 0 || batch > 1024 || io_uring_queue_init(batch, &ring, 0) < 0) {
        fprintf(stderr, "bad batch or io_uring_queue_init failed\n");
        return 1;
    }
    char *buf = aligned_alloc(4096, (size_t)batch * SLOT);
    int *fds = malloc(batch * sizeof(int)), *res = malloc(batch * sizeof(int));
    unsigned long long total = 0;
    double t0 = now();
    for (size_t start = 0; start < count; start += batch) {
        unsigned n = count - start < batch ? (unsigned)(count - start) : batch;
        for (unsigned i = 0; i < n; i++) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
            io_uring_prep_openat(sqe, AT_FDCWD, paths[start + i], O_RDONLY | O_CLOEXEC, 0);
            sqe->user_data = i;
        }
        if (run_phase(&ring, n, fds) < 0)
            return 1;
        for (unsigned i = 0; i < n; i++) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
            io_uring_prep_read(sqe, fds[i], buf + (size_t)i * SLOT, SLOT, 0);
            sqe->user_data = i;
        }
        if (run_phase(&ring, n, res) < 0)
            return 1;
        for (unsigned i = 0; i < n; i++) {
            total += res[i] > 0 ? res[i] : 0;
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
            io_uring_prep_close(sqe, fds[i]);
            sqe->user_data = i;
        }
        if (run_phase(&ring, n, res) < 0)
            return 1;
    }
    double elapsed = now() - t0;
    fprintf(stderr, "bytes %llu\n", total);
    printf("%.0f\n", count / elapsed);
    return 0;
}
