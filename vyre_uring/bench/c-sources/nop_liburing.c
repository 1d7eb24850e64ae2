/* The C ceiling for ring overhead: IORING_OP_NOP through liburing, the way a careful
 * C program batches them. Usage: nop_liburing BATCH TOTAL_OPS
 * Prints one line: ops_per_second. Only the loop is timed (not setup). */
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s BATCH TOTAL_OPS\n", argv[0]);
        return 2;
    }
    unsigned batch = (unsigned)atoi(argv[1]);
    long total = atol(argv[2]);
    struct io_uring ring;
    int ret = io_uring_queue_init(256, &ring, 0);
    if (ret < 0 || batch == 0 || batch > 256) {
        fprintf(stderr, "io_uring_queue_init: %d (batch must be 1..256)\n", ret);
        return 1;
    }
    long done = 0;
    unsigned long long checksum = 0;
    double t0 = now();
    while (done < total) {
        for (unsigned i = 0; i < batch; i++) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
            io_uring_prep_nop(sqe);
            sqe->user_data = done + i;
        }
        ret = io_uring_submit_and_wait(&ring, batch);
        if (ret < 0) {
            fprintf(stderr, "io_uring_submit_and_wait: %d\n", ret);
            return 1;
        }
        unsigned head, seen = 0;
        struct io_uring_cqe *cqe;
        while (seen < batch) {
            unsigned n = 0;
            io_uring_for_each_cqe(&ring, head, cqe) {
                checksum += cqe->user_data;
                n++;
            }
            io_uring_cq_advance(&ring, n);
            seen += n;
            if (seen < batch)
                io_uring_wait_cqe_nr(&ring, &cqe, batch - seen);
        }
        done += batch;
    }
    double elapsed = now() - t0;
    /* The checksum proves every completion was read; it is printed to stderr. */
    fprintf(stderr, "checksum %llu\n", checksum);
    printf("%.0f\n", done / elapsed);
    io_uring_queue_exit(&ring);
    return 0;
}
