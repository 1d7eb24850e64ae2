/* The C ceiling of bench/ranges_1m.py: COUNT random 4 KiB reads of FILE, shared
 * among THREADS threads (contiguous shares), each with a ring of its own (QD reads in
 * flight) and an fd of its own, as the reader's rings have. Read i lands in its own
 * 4 KiB of one COUNT x 4 KiB destination, faulted in before the clock starts, as the
 * Python side's reused destination is.
 * Usage: ranges_1m FILE COUNT THREADS [QD]   Prints reads_per_second. */
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BS 4096

static const char *path;
static size_t count, threads;
static unsigned qd = 64;
static uint64_t blocks;
static char *dest;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t block_of(size_t i)
{
    /* splitmix64 of the read's index: every thread draws the same offsets for the
     * same i, whatever the thread count. */
    uint64_t z = (uint64_t)i + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return (z ^ (z >> 31)) % blocks;
}

static void *read_share(void *arg)
{
    size_t id = (size_t)arg, lo = count * id / threads, hi = count * (id + 1) / threads;
    struct io_uring ring;
    int fd = open(path, O_RDONLY);
    if (fd < 0 || io_uring_queue_init(qd, &ring, 0) < 0) {
        fprintf(stderr, "open or io_uring set-up failed\n");
        exit(1);
    }
    size_t next = lo, done = lo, inflight = 0;
    while (done < hi) {
        while (inflight < qd && next < hi) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
            io_uring_prep_read(sqe, fd, dest + next * BS, BS, block_of(next) * BS);
            next++;
            inflight++;
        }
        if (io_uring_submit_and_wait(&ring, 1) < 0)
            exit(1);
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            if (cqe->res != BS) {
                fprintf(stderr, "read returned %d\n", cqe->res);
                exit(1);
            }
            seen++;
        }
        io_uring_cq_advance(&ring, seen);
        inflight -= seen;
        done += seen;
    }
    io_uring_queue_exit(&ring);
    close(fd);
    return NULL;
}

int main(int argc, char **argv)
{
    struct stat st;
    if (argc < 4) {
        fprintf(stderr, "usage: %s FILE COUNT THREADS [QD]\n", argv[0]);
        return 2;
    }
    path = argv[1];
    count = strtoull(argv[2], NULL, 10);
    threads = strtoull(argv[3], NULL, 10);
    if (argc > 4)
        qd = (unsigned)atoi(argv[4]);
    if (stat(path, &st) < 0 || st.st_size < BS || count == 0 || threads == 0 ||
        threads > 1024 || qd == 0 || qd > 4096) {
        fprintf(stderr, "bad FILE, COUNT, THREADS or QD\n");
        return 1;
    }
    blocks = (uint64_t)st.st_size / BS;
    dest = aligned_alloc(4096, count * BS);
    if (!dest) {
        fprintf(stderr, "no memory for the destination\n");
        return 1;
    }
    memset(dest, 1, count * BS);
    pthread_t *tid = malloc(threads * sizeof(pthread_t));
    double t0 = now();
    for (size_t i = 0; i < threads; i++)
        pthread_create(&tid[i], NULL, read_share, (void *)i);
    for (size_t i = 0; i < threads; i++)
        pthread_join(tid[i], NULL);
    printf("%.0f\n", count / (now() - t0));
    return 0;
}
