/* A stand-in for libcuda.so.1 over host memory, for CI machines without a GPU: the
 * driver calls vyre_uring/_cuda.py makes, with a GPU's timing where it matters.
 * Copies queue on their stream and run only when an event recorded after them, the
 * stream or the context is synchronized (as a GPU's may run late); a copy whose
 * source is not registered (pinned) memory, or whose destination is not inside a
 * "device allocation" (made with fake_device_alloc), fails the synchronize and is
 * counted in fake_bad_copies(). FAKE_CUDA_DEVICES=0 in the environment: no device. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { OK = 0, INVALID_VALUE = 1, NO_DEVICE = 100, INVALID_HANDLE = 400,
       NOT_REGISTERED = 713, ALREADY_REGISTERED = 712 };
#define MAX 256

typedef struct { uintptr_t dst, src; size_t n; } Copy;
typedef struct { Copy *q; size_t len, cap; int live; } Stream;
typedef struct { Stream *s; size_t upto; int live; } Event;
typedef struct { uintptr_t base; size_t size; } Range;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static Range pinned[MAX], device[MAX];
static int npinned, ndevice, bad_copies;
static Stream streams[MAX];
static Event events[4 * MAX];
static __thread void *current;

static int within(Range *r, int n, uintptr_t p, size_t len) {
    for (int i = 0; i < n; i++)
        if (p >= r[i].base && p + len <= r[i].base + r[i].size)
            return i;
    return -1;
}

/* Run the first `upto` copies of s (they complete in order, as on a stream). */
static int run(Stream *s, size_t upto) {
    int err = OK;
    for (size_t i = 0; i < upto; i++) {
        Copy *c = &s->q[i];
        if (within(pinned, npinned, c->src, c->n) < 0 ||
                within(device, ndevice, c->dst, c->n) < 0) {
            bad_copies++;
            err = INVALID_VALUE;
            continue;
        }
        memcpy((void *)c->dst, (void *)c->src, c->n);
    }
    memmove(s->q, s->q + upto, (s->len - upto) * sizeof(Copy));
    s->len -= upto;
    for (int e = 0; e < 4 * MAX; e++)
        if (events[e].live && events[e].s == s)
            events[e].upto = events[e].upto > upto ? events[e].upto - upto : 0;
    return err;
}

int fake_device_alloc(void *p, size_t n) {
    pthread_mutex_lock(&lock);
    device[ndevice++] = (Range){(uintptr_t)p, n};
    pthread_mutex_unlock(&lock);
    return OK;
}
int fake_registered(void) { return npinned; }
int fake_bad_copies(void) { return bad_copies; }
int fake_pending_copies(void) {
    int n = 0;
    for (int i = 0; i < MAX; i++)
        n += streams[i].live ? (int)streams[i].len : 0;
    return n;
}

int cuInit(unsigned f) {
    const char *v = getenv("FAKE_CUDA_INIT_MS");   /* a slow init, as a real one is */
    (void)f;
    if (v)
        usleep(1000 * atoi(v));
    return OK;
}
int cuDeviceGetCount(int *n) {
    const char *v = getenv("FAKE_CUDA_DEVICES");
    *n = v ? atoi(v) : 1;
    return OK;
}
int cuDeviceGet(int *d, int i) { *d = i; return OK; }
int cuDevicePrimaryCtxRetain(void **c, int d) { *c = (void *)(uintptr_t)(0x100 + d); return OK; }
int cuCtxGetCurrent(void **c) { *c = current; return OK; }
int cuCtxSetCurrent(void *c) { current = c; return OK; }
int cuCtxSynchronize(void) {
    int err = OK;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX; i++)
        if (streams[i].live && run(&streams[i], streams[i].len))
            err = INVALID_VALUE;
    pthread_mutex_unlock(&lock);
    return err;
}
int cuMemHostRegister_v2(void *p, size_t n, unsigned f) {
    (void)f;
    if (!current) return INVALID_HANDLE;
    pthread_mutex_lock(&lock);
    int err = within(pinned, npinned, (uintptr_t)p, 1) >= 0 ? ALREADY_REGISTERED : OK;
    if (!err) pinned[npinned++] = (Range){(uintptr_t)p, n};
    pthread_mutex_unlock(&lock);
    return err;
}
int cuMemHostUnregister(void *p) {
    pthread_mutex_lock(&lock);
    int i = within(pinned, npinned, (uintptr_t)p, 1), err = OK;
    if (i < 0 || pinned[i].base != (uintptr_t)p) err = NOT_REGISTERED;
    else pinned[i] = pinned[--npinned];
    pthread_mutex_unlock(&lock);
    return err;
}
int cuMemcpyHtoDAsync_v2(uint64_t dst, const void *src, size_t n, void *stream) {
    Stream *s = stream;
    if (!current || !s || !s->live) return INVALID_HANDLE;
    pthread_mutex_lock(&lock);
    if (s->len == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->q = realloc(s->q, s->cap * sizeof(Copy));
    }
    s->q[s->len++] = (Copy){(uintptr_t)dst, (uintptr_t)src, n};
    pthread_mutex_unlock(&lock);
    return OK;
}
int cuMemGetAddressRange_v2(uint64_t *base, size_t *size, uint64_t p) {
    if (!current) return INVALID_HANDLE;
    int i = within(device, ndevice, (uintptr_t)p, 1);
    if (i < 0) return INVALID_VALUE;
    *base = device[i].base;
    *size = device[i].size;
    return OK;
}
int cuPointerGetAttribute(void *data, int attr, uint64_t p) {
    if (attr != 9 || within(device, ndevice, (uintptr_t)p, 1) < 0) return INVALID_VALUE;
    *(int *)data = 0;
    return OK;
}
int cuStreamCreate(void **out, unsigned f) {
    (void)f;
    if (!current) return INVALID_HANDLE;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX; i++)
        if (!streams[i].live) {
            streams[i] = (Stream){NULL, 0, 0, 1};
            *out = &streams[i];
            pthread_mutex_unlock(&lock);
            return OK;
        }
    pthread_mutex_unlock(&lock);
    return INVALID_VALUE;
}
int cuStreamSynchronize(void *stream) {
    Stream *s = stream;
    pthread_mutex_lock(&lock);
    int err = run(s, s->len);
    pthread_mutex_unlock(&lock);
    return err;
}
int cuStreamDestroy_v2(void *stream) {
    Stream *s = stream;
    pthread_mutex_lock(&lock);
    if (s->len) bad_copies++;           /* destroyed with copies not yet run */
    free(s->q);
    *s = (Stream){0};
    pthread_mutex_unlock(&lock);
    return OK;
}
int cuEventCreate(void **out, unsigned f) {
    (void)f;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < 4 * MAX; i++)
        if (!events[i].live) {
            events[i] = (Event){NULL, 0, 1};
            *out = &events[i];
            pthread_mutex_unlock(&lock);
            return OK;
        }
    pthread_mutex_unlock(&lock);
    return INVALID_VALUE;
}
int cuEventRecord(void *event, void *stream) {
    pthread_mutex_lock(&lock);
    ((Event *)event)->s = stream;
    ((Event *)event)->upto = ((Stream *)stream)->len;
    pthread_mutex_unlock(&lock);
    return OK;
}
int cuEventSynchronize(void *event) {
    Event *e = event;
    pthread_mutex_lock(&lock);
    int err = e->s ? run(e->s, e->upto) : OK;
    pthread_mutex_unlock(&lock);
    return err;
}
int cuEventDestroy_v2(void *event) { ((Event *)event)->live = 0; return OK; }
int cuGetErrorName(int code, const char **name) {
    *name = code == INVALID_VALUE ? "CUDA_ERROR_INVALID_VALUE" :
            code == NOT_REGISTERED ? "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED" :
            code == INVALID_HANDLE ? "CUDA_ERROR_INVALID_HANDLE" : "CUDA_ERROR_FAKE";
    return OK;
}
