/* The C reference for byte ranges of one file: COUNT reads of BS bytes, QD of them
 * kept in flight through liburing, at random BS-aligned offsets ("rand") or one after
 * another, wrapping at the end of the file ("seq"). Each in-flight read has its own
 * page-aligned BS-byte slot of one buffer, reused as reads complete.
 * With "direct", the file is opened O_DIRECT (the slots and offsets are aligned).
 * Usage: ranges_liburing FILE BS QD COUNT rand|seq [direct]
 * Prints reads_per_second (timing only the reading). */
#define _GNU_SOURCE /* O_DIRECT */
#include <fcntl.h>
#include <liburing.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t next_random(uint64_t *state)
{
    /* xorshift64*: cheap and well spread; the offsets need no more. */
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 0x2545F4914F6CDD1DULL;
}

int main(int argc, char **argv)
{
    if (argc != 6 && !(argc == 7 && strcmp(argv[6], "direct") == 0)) {
        fprintf(stderr, "usage: %s FILE BS QD COUNT rand|seq [direct]\n", argv[0]);
        return 2;
    }
    size_t bs = strtoull(argv[2], NULL, 10);
    unsigned qd = (unsigned)atoi(argv[3]);
    size_t count = strtoull(argv[4], NULL, 10);
    int random = strcmp(argv[5], "rand") == 0;
    int fd = open(argv[1], O_RDONLY | (argc == 7 ? O_DIRECT : 0));
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || bs == 0 || (size_t)st.st_size < bs || qd == 0) {
        perror("open/fstat or bad BS/QD");
        return 1;
    }
    uint64_t blocks = st.st_size / bs, state = 0x9E3779B97F4A7C15ULL;
    struct io_uring ring;
    if (io_uring_queue_init(qd, &ring, 0) < 0) {
        fprintf(stderr, "io_uring_queue_init failed\n");
        return 1;
    }
    char *buf = aligned_alloc(4096, qd * ((bs + 4095) & ~(size_t)4095));
    unsigned *free_slots = malloc(qd * sizeof(unsigned)), nfree = qd;
    for (unsigned i = 0; i < qd; i++)
        free_slots[i] = i;
    size_t submitted = 0, completed = 0;
    unsigned long long total = 0;
    double t0 = now();
    while (completed < count) {
        while (nfree && submitted < count) {
            unsigned slot = free_slots[--nfree];
            uint64_t block = random ? next_random(&state) % blocks : submitted % blocks;
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
            io_uring_prep_read(sqe, fd, buf + slot * ((bs + 4095) & ~(size_t)4095), bs,
                               block * bs);
            sqe->user_data = slot;
            submitted++;
        }
        if (io_uring_submit_and_wait(&ring, 1) < 0)
            return 1;
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            if (cqe->res < 0) {
                fprintf(stderr, "read: %s\n", strerror(-cqe->res));
                return 1;
            }
            total += cqe->res;
            free_slots[nfree++] = (unsigned)cqe->user_data;
            seen++;
        }
        io_uring_cq_advance(&ring, seen);
        completed += seen;
    }
    double elapsed = now() - t0;
    fprintf(stderr, "bytes %llu\n", total);
    printf("%.0f\n", count / elapsed);
    return 0;
}
