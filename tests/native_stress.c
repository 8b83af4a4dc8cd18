/* Native (C) stress helpers for the RAW domain, loaded with ctypes by test_native_threads.py.
 *
 * PyMem_RawMalloc & co. may be called from any thread without the GIL, including threads that
 * have no Python thread state at all.  These helpers hammer them from plain pthreads in tight
 * loops (far more real contention than ctypes calls from Python threads allow), with blocks
 * handed between threads, and from threads whose TLS destructors allocate and free after the
 * allocator's own thread-exit handling.  Every block carries a pattern derived from a unique id
 * that is verified before each free/realloc.  Functions return the number of errors seen.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

extern void *PyMem_RawMalloc(size_t);
extern void *PyMem_RawCalloc(size_t, size_t);
extern void *PyMem_RawRealloc(void *, size_t);
extern void PyMem_RawFree(void *);

typedef struct { unsigned char *p; size_t n; uint64_t id; } blk;

static atomic_long errors;
static char first_error[256];

static void error(const char *what, size_t n) {
    if (atomic_fetch_add(&errors, 1) == 0)
        snprintf(first_error, sizeof first_error, "%s (size %zu)", what, n);
}

const char *rm_first_error(void) { return first_error; }

static uint64_t rnd(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return *s = x;
}

/* Positions that carry the pattern: all of a small block; head, tail and the first 8 bytes of
 * every 4 KiB page of a large one.  FOR_MARKED visits them without touching the rest. */
#define FOR_MARKED(n, upto, i, body)                                                         \
    do {                                                                                     \
        if ((n) <= 4096) {                                                                   \
            for (size_t i = 0; i < (upto); i++) { body; }                                    \
        } else {                                                                             \
            size_t lim_ = (upto) < 256 ? (upto) : 256;                                       \
            for (size_t i = 0; i < lim_; i++) { body; }                                      \
            for (size_t pg_ = 4096; pg_ < (upto) && pg_ + 256 < (n); pg_ += 4096)            \
                for (size_t i = pg_; i < pg_ + 8 && i < (upto); i++) { body; }               \
            for (size_t i = (n) - 256; i < (upto); i++) { body; }                            \
        }                                                                                    \
    } while (0)

static unsigned char pat(uint64_t id, size_t i) {
    return (unsigned char)((id * 0x9E3779B1u) ^ (i * 31u) ^ (i >> 8) ^ (id >> 3));
}

static void fill(blk b) {
    FOR_MARKED(b.n, b.n, i, b.p[i] = pat(b.id, i));
    if (b.n >= 8) memcpy(b.p, &b.id, 8);
}

/* Check the first `upto` bytes of a block written by fill() for a block of size `n`. */
static int check(blk b, size_t upto) {
    int ok = 1;
    if (b.n >= 8 && upto >= 8) {
        uint64_t id; memcpy(&id, b.p, 8);
        if (id != b.id) return 0;
    }
    FOR_MARKED(b.n, upto, i, if (i >= 8 && b.p[i] != pat(b.id, i)) ok = 0);
    if (b.n < 8)
        for (size_t i = 0; i < upto; i++) if (b.p[i] != pat(b.id, i)) ok = 0;
    return ok;
}

static int check_zero(const unsigned char *p, size_t n) {
    int ok = 1;
    FOR_MARKED(n, n, i, if (p[i]) ok = 0);
    return ok;
}

static size_t pick(uint64_t *s) {
    uint64_t r = rnd(s) % 1000;
    if (r < 700) return rnd(s) % 513;
    if (r < 950) return 513 + rnd(s) % 16000;
    if (r < 996) return 16513 + rnd(s) % 250000;
    return 300000 + rnd(s) % (2u << 20);
}

/* ---- many threads, cross-thread frees ---------------------------------------------------- */

#define MAXT 64
#define RING 512
#define LIVE 256

typedef struct { pthread_mutex_t mu; blk items[RING]; int head, count; } mailbox;
static mailbox boxes[MAXT];
static int g_nthreads;
static long g_iters;
static pthread_barrier_t g_barrier;
static atomic_int g_stop;

/* Make a running rm_stress() finish early (each thread stops at its next iteration). */
void rm_request_stop(void) { atomic_store(&g_stop, 1); }

static void release(blk b, const char *where) {
    if (!check(b, b.n)) error(where, b.n);
    PyMem_RawFree(b.p);
}

static int resize(blk *b, size_t m) {
    if (!check(*b, b->n)) { error("corrupted before realloc", b->n); }
    unsigned char *q = PyMem_RawRealloc(b->p, m);
    if (!q) { error("realloc returned NULL", m); return 0; }
    if ((uintptr_t)q & 15) error("realloc result not 16-byte aligned", m);
    size_t k = b->n < m ? b->n : m;
    blk old = { q, b->n, b->id };
    if (!check(old, k)) error("realloc lost contents", m);
    b->p = q; b->n = m;
    fill(*b);
    return 1;
}

static int drain(int t, blk *out, int max) {
    mailbox *mb = &boxes[t];
    pthread_mutex_lock(&mb->mu);
    int k = 0;
    while (mb->count && k < max) {
        out[k++] = mb->items[mb->head];
        mb->head = (mb->head + 1) % RING;
        mb->count--;
    }
    pthread_mutex_unlock(&mb->mu);
    return k;
}

static void *stress_worker(void *arg) {
    long t = (long)arg;
    uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(t + 1);
    blk live[LIVE];
    int nlive = 0;
    uint64_t nextid = ((uint64_t)t << 40) | 1;
    blk in[64];
    for (long it = 0; it < g_iters && !atomic_load_explicit(&g_stop, memory_order_relaxed); it++) {
        uint64_t r = rnd(&s) % 100;
        if (r < 45 || nlive == 0) {
            if (nlive == LIVE) { release(live[--nlive], "corrupted before free"); }
            size_t n = pick(&s);
            int use_calloc = rnd(&s) % 5 == 0;
            unsigned char *p = use_calloc ? PyMem_RawCalloc(1, n) : PyMem_RawMalloc(n);
            if (!p) { error("malloc returned NULL", n); continue; }
            if ((uintptr_t)p & 15) error("block not 16-byte aligned", n);
            if (use_calloc && !check_zero(p, n)) error("calloc block not zeroed", n);
            blk b = { p, n, ++nextid };
            fill(b);
            live[nlive++] = b;
        } else if (r < 65) {
            int i = (int)(rnd(&s) % (uint64_t)nlive);
            blk b = live[i]; live[i] = live[--nlive];
            release(b, "corrupted before free");
        } else if (r < 82) {
            int i = (int)(rnd(&s) % (uint64_t)nlive);
            if (!resize(&live[i], pick(&s))) { live[i] = live[--nlive]; }
        } else {
            int i = (int)(rnd(&s) % (uint64_t)nlive);
            blk b = live[i]; live[i] = live[--nlive];
            int to = (int)((t + 1 + (long)(rnd(&s) % (uint64_t)(g_nthreads > 1 ? g_nthreads - 1 : 1))) % g_nthreads);
            mailbox *mb = &boxes[to];
            pthread_mutex_lock(&mb->mu);
            int sent = 0;
            if (mb->count < RING) {
                mb->items[(mb->head + mb->count) % RING] = b;
                mb->count++;
                sent = 1;
            }
            pthread_mutex_unlock(&mb->mu);
            if (!sent) release(b, "corrupted before free");
        }
        int k = drain((int)t, in, 64);
        for (int j = 0; j < k; j++) {
            uint64_t how = rnd(&s) % 3;
            if (how == 0 || nlive == LIVE) {
                release(in[j], "received block corrupted");
            } else {
                blk b = in[j];
                if (how == 1) {
                    if (!resize(&b, pick(&s))) continue;
                } else if (!check(b, b.n)) {
                    error("received block corrupted", b.n);
                }
                live[nlive++] = b;
            }
        }
    }
    pthread_barrier_wait(&g_barrier);
    int k;
    while ((k = drain((int)t, in, 64)) > 0)
        for (int j = 0; j < k; j++) release(in[j], "received block corrupted");
    while (nlive) release(live[--nlive], "corrupted at the end");
    return NULL;
}

long rm_stress(int nthreads, long iters) {
    if (nthreads < 1 || nthreads > MAXT) return -1;
    atomic_store(&errors, 0);
    atomic_store(&g_stop, 0);
    g_nthreads = nthreads;
    g_iters = iters;
    for (int i = 0; i < nthreads; i++) {
        pthread_mutex_init(&boxes[i].mu, NULL);
        boxes[i].head = boxes[i].count = 0;
    }
    pthread_barrier_init(&g_barrier, NULL, (unsigned)nthreads);
    pthread_t th[MAXT];
    for (long i = 0; i < nthreads; i++)
        if (pthread_create(&th[i], NULL, stress_worker, (void *)i)) return -2;
    for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&g_barrier);
    return atomic_load(&errors);
}

/* ---- short-lived native threads with allocating TLS destructors -------------------------- */

static pthread_key_t early_key, late_key;
static int early_ok, late_ok;

/* A TLS destructor that frees the block the thread left in the key, then allocates and frees. */
static void tls_destructor(void *value) {
    blk *b = value;
    if (!check(*b, b->n)) error("block corrupted at thread exit", b->n);
    PyMem_RawFree(b->p);
    unsigned char *p = PyMem_RawMalloc(200);
    if (!p) { error("malloc in a TLS destructor returned NULL", 200); }
    else { memset(p, 0x5A, 200); p = PyMem_RawRealloc(p, 5000); if (p) PyMem_RawFree(p); }
    PyMem_RawFree(b);
}

/* Call before rustmalloc.install(): this key's destructor runs before the allocator's. */
int rm_make_early_key(void) { early_ok = pthread_key_create(&early_key, tls_destructor) == 0; return early_ok; }
/* Call after rustmalloc.install(): this key's destructor runs after the allocator's. */
int rm_make_late_key(void) { late_ok = pthread_key_create(&late_key, tls_destructor) == 0; return late_ok; }

static void *handed[4096];

static blk *tls_block(uint64_t id, size_t n) {
    blk *b = PyMem_RawMalloc(sizeof(blk));
    if (!b) { error("malloc returned NULL", sizeof(blk)); return NULL; }
    b->p = PyMem_RawMalloc(n); b->n = n; b->id = id;
    if (!b->p) { error("malloc returned NULL", n); PyMem_RawFree(b); return NULL; }
    fill(*b);
    return b;
}

static void *short_worker(void *arg) {
    long i = (long)arg;
    uint64_t s = 0xD1B54A32D192ED03ull * (uint64_t)(i + 1);
    blk live[32];
    for (int k = 0; k < 32; k++) {
        size_t n = pick(&s) % 20000;
        live[k].p = PyMem_RawMalloc(n); live[k].n = n; live[k].id = ((uint64_t)i << 20) | (uint64_t)k;
        if (!live[k].p) { error("malloc returned NULL", n); return NULL; }
        fill(live[k]);
    }
    for (int k = 0; k < 32; k++) release(live[k], "corrupted before free");
    /* one block for the main thread to free after this thread is gone */
    handed[i % 4096] = PyMem_RawMalloc(64 + (size_t)(i % 1000));
    if (handed[i % 4096]) memset(handed[i % 4096], 0x3C, 64);
    if (early_ok) { blk *b = tls_block((uint64_t)i * 2 + 1, 100 + (size_t)(i % 3000)); if (b) pthread_setspecific(early_key, b); }
    if (late_ok) { blk *b = tls_block((uint64_t)i * 2 + 2, 100 + (size_t)(i % 3000)); if (b) pthread_setspecific(late_key, b); }
    return NULL;
}

long rm_thread_churn(int total, int batch) {
    atomic_store(&errors, 0);
    if (batch < 1 || batch > 4096) return -1;
    pthread_t th[4096];
    for (int start = 0; start < total; start += batch) {
        int n = total - start < batch ? total - start : batch;
        for (int j = 0; j < n; j++)
            if (pthread_create(&th[j], NULL, short_worker, (void *)(long)(start + j))) return -2;
        for (int j = 0; j < n; j++) pthread_join(th[j], NULL);
        for (int j = 0; j < n; j++) {
            unsigned char *p = handed[(start + j) % 4096];
            if (!p) { error("handed block missing", 0); continue; }
            for (int q = 0; q < 64; q++) if (p[q] != 0x3C) { error("handed block corrupted", 64); break; }
            PyMem_RawFree(p);
            handed[(start + j) % 4096] = NULL;
        }
    }
    return atomic_load(&errors);
}
