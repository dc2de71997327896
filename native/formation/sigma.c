/* sigma.c -- local intensity scale on the half-resolution smoothed image:
 *     sigma = c * mean_w2(|S - mean_w1(S)|)
 * with separable box means of half-widths w1, w2 (chosen from the psf size),
 * reflective borders (about the edge sample), applied only along "active"
 * axes (more than max(w1, w2) samples). The constants c (for 1, 2 or 3 active
 * axes) are LibAPR's rescaling factors. With no active axis the scale is the
 * constant mean(S) - min(S).
 *
 * Each mean runs in one streaming pass (box_mean_stream) when its per-thread
 * buffers are small, else axis by axis (box_axis); both give identical
 * values (same sums in the same order). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "aprnet.h"
#include "fm_common.h"

#define FM_WMAX 6 /* largest box half-width of the tables */
#define FM_STREAM_BYTES ((int64_t)4 << 20) /* per-thread scratch of the streaming box means */

static const int win1_table[6] = {1, 1, 1, 2, 2, 3};
static const int win2_table[6] = {2, 3, 4, 4, 5, 6};
static const double rescale_3d[6] = {12.8214, 26.1256, 40.2795, 23.3692, 36.2061, 27.0385};
static const double rescale_2d[6] = {13.2421, 28.7069, 52.0385, 24.4272, 34.9565, 21.1891};
static const double rescale_1d[6] = {13.9040, 31.2843, 57.4037, 30.3767, 45.9930, 29.0890};

/* dst[k] = (l[0][k] + l[1][k] + ... + l[nl-1][k]) * inv, summed in this order,
 * starting from 0.0f when from_zero (the strided passes) or from l[0] (the x
 * pass). One kernel per line count so that the sum over the lines is
 * unrolled and the loop over k is vectorised. */
#define FM_SUM_KERNEL(NL)                                                                       \
    static void sum_lines_##NL(float *restrict dst, const float *const *lp, int64_t len, float inv, \
                               int from_zero) {                                                 \
        const float *l[NL];                                                                     \
        for (int j = 0; j < NL; ++j) l[j] = lp[j];                                              \
        if (from_zero) {                                                                        \
            for (int64_t k = 0; k < len; ++k) {                                                 \
                float acc = 0.0f;                                                               \
                for (int j = 0; j < NL; ++j) acc += l[j][k];                                    \
                dst[k] = acc * inv;                                                             \
            }                                                                                   \
        } else {                                                                                \
            for (int64_t k = 0; k < len; ++k) {                                                 \
                float acc = l[0][k];                                                            \
                for (int j = 1; j < NL; ++j) acc += l[j][k];                                    \
                dst[k] = acc * inv;                                                             \
            }                                                                                   \
        }                                                                                       \
    }
FM_SUM_KERNEL(3)
FM_SUM_KERNEL(5)
FM_SUM_KERNEL(7)
FM_SUM_KERNEL(9)
FM_SUM_KERNEL(11)
FM_SUM_KERNEL(13)
#undef FM_SUM_KERNEL

static void sum_lines(float *dst, const float *const *lp, int nl, int64_t len, float inv, int from_zero) {
    switch (nl) {
    case 3: sum_lines_3(dst, lp, len, inv, from_zero); return;
    case 5: sum_lines_5(dst, lp, len, inv, from_zero); return;
    case 7: sum_lines_7(dst, lp, len, inv, from_zero); return;
    case 9: sum_lines_9(dst, lp, len, inv, from_zero); return;
    case 11: sum_lines_11(dst, lp, len, inv, from_zero); return;
    case 13: sum_lines_13(dst, lp, len, inv, from_zero); return;
    default: break;
    }
    for (int64_t k = 0; k < len; ++k) {
        float acc = from_zero ? 0.0f + lp[0][k] : lp[0][k];
        for (int j = 1; j < nl; ++j) acc += lp[j][k];
        dst[k] = acc * inv;
    }
}

/* x box mean of one row (nx values), out of place; pad holds nx + 2w */
static void box_row_x(const float *restrict src, float *restrict dst, int64_t nx, int w, float inv,
                      float *restrict pad) {
    const float *lp[2 * FM_WMAX + 1];
    for (int64_t i = -w; i < 0; ++i) pad[i + w] = src[fm_mirror(i, nx)];
    memcpy(pad + w, src, sizeof(float) * (size_t)nx);
    for (int64_t i = nx; i < nx + w; ++i) pad[i + w] = src[fm_mirror(i, nx)];
    for (int j = 0; j <= 2 * w; ++j) lp[j] = pad + j;
    sum_lines(dst, lp, 2 * w + 1, nx, inv, 0);
}

/* Box mean of half-width w along axis (0 = z, 1 = y, 2 = x), out of place. */
static int box_axis(const float *in, float *out, fm_dims d, int axis, int w, const int32_t *cancel) {
    const int64_t nz = d.nz, ny = d.ny, nx = d.nx, plane = ny * nx;
    const float inv = 1.0f / (float)(2 * w + 1);
    int status = APRNET_OK;
    if (axis == 2) {
#pragma omp parallel
        {
            float *pad = malloc(sizeof(float) * (size_t)(nx + 2 * w));
            if (!pad) {
#pragma omp atomic write
                status = APRNET_ERR_NOMEM;
            }
#pragma omp for schedule(static)
            for (int64_t r = 0; r < nz * ny; ++r) {
                if (!pad || fm_cancelled(cancel)) continue;
                box_row_x(in + r * nx, out + r * nx, nx, w, inv, pad);
            }
            free(pad);
        }
        if (status == APRNET_OK && fm_cancelled(cancel)) status = APRNET_ERR_CANCELLED;
        return status;
    }
    const int64_t n = axis == 1 ? ny : nz;
    const int64_t stride = axis == 1 ? nx : plane;
    const int64_t nouter = axis == 1 ? nz : 1;
#pragma omp parallel for schedule(static)
    for (int64_t job = 0; job < nouter * n; ++job) {
        if (fm_cancelled(cancel)) continue;
        const int64_t i = job % n, o = job / n;
        const float *lp[2 * FM_WMAX + 1];
        for (int j = -w; j <= w; ++j) lp[j + w] = in + o * plane + fm_mirror(i + j, n) * stride;
        sum_lines(out + o * plane + i * stride, lp, 2 * w + 1, stride, inv, 1);
    }
    if (status == APRNET_OK && fm_cancelled(cancel)) status = APRNET_ERR_CANCELLED;
    return status;
}

/* ----- streaming version: one pass per box mean, in cache -----
 * The mean along the outer active axis (z if active, else y) runs over a ring
 * of 2w+1 "units" (planes, or rows of a plane) that already hold the means
 * along the inner axes, computed once per unit (at the start of a thread's
 * range of units, also for the w units before it). Every value is computed
 * with the same arithmetic, in the same order, as by the box_axis passes. */

enum { POST_ABSDIFF = 1, POST_SCALE = 2 };

typedef struct {
    fm_dims d;
    int act[3]; /* z, y, x active */
    int outer;  /* 0: units are planes (z ring); 1: units are rows (y ring); 2: rows, x only */
    int w;
    float inv;
} box_plan;

static box_plan make_plan(fm_dims d, const int act[3], int w) {
    box_plan b = {d, {act[0], act[1], act[2]}, act[0] ? 0 : act[1] ? 1 : 2, w, 1.0f / (float)(2 * w + 1)};
    return b;
}

static int64_t unit_len(const box_plan *b) { return b->outer == 0 ? b->d.ny * b->d.nx : b->d.nx; }

/* per-thread scratch floats: ring, x-filtered plane (outer 0), pad */
static int64_t scratch_len(const box_plan *b) {
    const int64_t u = unit_len(b);
    return (2 * b->w + 1) * u + (b->outer == 0 ? b->d.ny * b->d.nx : 0) + b->d.nx + 2 * b->w;
}

/* inner means of unit p (of plane o for rows) -> out */
static void inner_unit(const box_plan *b, const float *src, int64_t o, int64_t p, float *out, float *xpl,
                       float *pad) {
    const int64_t ny = b->d.ny, nx = b->d.nx, plane = ny * nx;
    const int w = b->w;
    if (b->outer != 0) { /* a row: x mean or copy */
        const float *row = src + o * plane + p * nx;
        if (b->act[2]) box_row_x(row, out, nx, w, b->inv, pad);
        else memcpy(out, row, sizeof(float) * (size_t)nx);
        return;
    }
    const float *pl = src + p * plane;
    if (b->act[2]) {
        float *dx = b->act[1] ? xpl : out;
        for (int64_t y = 0; y < ny; ++y) box_row_x(pl + y * nx, dx + y * nx, nx, w, b->inv, pad);
        pl = dx;
    }
    if (b->act[1]) {
        const float *lp[2 * FM_WMAX + 1];
        for (int64_t y = 0; y < ny; ++y) {
            for (int j = -w; j <= w; ++j) lp[j + w] = pl + fm_mirror(y + j, ny) * nx;
            sum_lines(out + y * nx, lp, 2 * w + 1, nx, b->inv, 1);
        }
    } else if (!b->act[2]) {
        memcpy(out, pl, sizeof(float) * (size_t)plane);
    }
}

static void post_op(float *restrict v, const float *restrict ref, int64_t len, int post, float c) {
    if (post == POST_ABSDIFF)
        for (int64_t k = 0; k < len; ++k) v[k] = fabsf(ref[k] - v[k]);
    else
        for (int64_t k = 0; k < len; ++k) v[k] = c * v[k];
}

/* Streaming box mean of half-width w over the active axes, src -> dst
 * (distinct), followed by the post operation (|ref - mean| or c * mean). */
static int box_mean_stream(const box_plan *b, const float *src, float *dst, int post, const float *ref, float c,
                           const int32_t *cancel) {
    const int64_t nz = b->d.nz, ny = b->d.ny, nx = b->d.nx, plane = ny * nx;
    const int w = b->w, nring = 2 * w + 1;
    const int64_t ulen = unit_len(b);
    const int64_t nunits = b->outer == 0 ? nz : ny, nouter = b->outer == 0 ? 1 : nz;
    const int64_t nthreads = omp_get_max_threads();
    int64_t nchunks = nouter >= nthreads ? 1 : nthreads;
    if (nchunks > nunits) nchunks = nunits;
    const int64_t njobs = nouter * nchunks;
    int status = APRNET_OK;
#pragma omp parallel
    {
        float *buf = malloc(sizeof(float) * (size_t)scratch_len(b));
        if (!buf) {
#pragma omp atomic write
            status = APRNET_ERR_NOMEM;
        }
        float *ring = buf, *xpl = buf ? buf + nring * ulen : NULL;
        float *pad = xpl ? xpl + (b->outer == 0 ? plane : 0) : NULL;
#pragma omp for schedule(static)
        for (int64_t job = 0; job < njobs; ++job) {
            if (!buf || fm_cancelled(cancel)) continue;
            const int64_t o = job / nchunks, ch = job % nchunks;
            const int64_t u0 = ch * nunits / nchunks, u1 = (ch + 1) * nunits / nchunks;
            const int64_t obase = o * plane; /* offset of plane o (rows) or 0 (planes) */
            if (b->outer == 2) { /* x only: row by row */
                for (int64_t u = u0; u < u1; ++u) {
                    float *d = dst + obase + u * nx;
                    box_row_x(src + obase + u * nx, d, nx, w, b->inv, pad);
                    post_op(d, post == POST_ABSDIFF ? ref + obase + u * nx : NULL, nx, post, c);
                }
                continue;
            }
            int64_t hi = (u0 - w > 0 ? u0 - w : 0) - 1; /* last unit in the ring */
            for (int64_t u = u0; u < u1; ++u) {
                if (fm_cancelled(cancel)) break; /* this job only: no exit from the parallel region */
                const int64_t need = u + w < nunits ? u + w : nunits - 1;
                for (int64_t p = (hi + 1 > u - w ? hi + 1 : (u - w > 0 ? u - w : 0)); p <= need; ++p)
                    inner_unit(b, src, o, p, ring + (p % nring) * ulen, xpl, pad);
                if (need > hi) hi = need;
                float *d = dst + obase + u * ulen;
                const float *lp[2 * FM_WMAX + 1];
                for (int j = -w; j <= w; ++j) lp[j + w] = ring + (fm_mirror(u + j, nunits) % nring) * ulen;
                sum_lines(d, lp, nring, ulen, b->inv, 1);
                post_op(d, post == POST_ABSDIFF ? ref + obase + u * ulen : NULL, ulen, post, c);
            }
        }
        free(buf);
    }
    if (status == APRNET_OK && fm_cancelled(cancel)) status = APRNET_ERR_CANCELLED;
    return status;
}

/* the streaming version when its per-thread scratch stays small */
static int stream_ok(fm_dims d, const int act[3], int w) {
    const box_plan b = make_plan(d, act, w);
    const int64_t per_thread = (int64_t)sizeof(float) * scratch_len(&b);
    return per_thread <= FM_STREAM_BYTES;
}

int aprnet_fm_local_intensity_scale(const float *smooth, fm_dims d, int psf, float *sigma, const int32_t *cancel) {
    int ind = psf - 1;
    if (ind < 0) ind = 0;
    if (ind > 5) ind = 5;
    const int w1 = win1_table[ind], w2 = win2_table[ind];
    const int wmax = w1 > w2 ? w1 : w2;
    const int64_t n = fm_size(d);
    int active[3] = {d.nz > wmax, d.ny > wmax, d.nx > wmax};
    int nactive = active[0] + active[1] + active[2];
    if (nactive == 0) {
        double sum = 0.0;
        float mn = smooth[0];
        for (int64_t i = 0; i < n; ++i) {
            sum += smooth[i];
            if (smooth[i] < mn) mn = smooth[i];
        }
        float val = (float)(sum / (double)n - (double)mn);
        if (val < 0.0f) val = 0.0f;
        for (int64_t i = 0; i < n; ++i) sigma[i] = val;
        return APRNET_OK;
    }
    const float c = (float)(nactive == 3 ? rescale_3d[ind] : nactive == 2 ? rescale_2d[ind] : rescale_1d[ind]);
    float *t = aprnet_fm_alloc(sizeof(float) * (size_t)n);
    if (!t) return APRNET_ERR_NOMEM;
    if (stream_ok(d, active, w1) && stream_ok(d, active, w2)) {
        const box_plan b1 = make_plan(d, active, w1), b2 = make_plan(d, active, w2);
        int st = box_mean_stream(&b1, smooth, t, POST_ABSDIFF, smooth, c, cancel);
        if (st == APRNET_OK) st = box_mean_stream(&b2, t, sigma, POST_SCALE, NULL, c, cancel);
        free(t);
        return st;
    }
    int st = APRNET_OK;
    /* first mean, ping-pong between sigma and t */
    const float *cur = smooth;
    for (int axis = 2; axis >= 0 && st == APRNET_OK; --axis) {
        if (!active[axis]) continue;
        float *dst = (cur == sigma) ? t : sigma;
        st = box_axis(cur, dst, d, axis, w1, cancel);
        cur = dst;
    }
    if (st != APRNET_OK) {
        free(t);
        return st;
    }
    float *x = (float *)cur;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) x[i] = fabsf(smooth[i] - x[i]);
    for (int axis = 2; axis >= 0 && st == APRNET_OK; --axis) {
        if (!active[axis]) continue;
        float *dst = (x == sigma) ? t : sigma;
        st = box_axis(x, dst, d, axis, w2, cancel);
        x = dst;
    }
    if (st == APRNET_OK) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; ++i) sigma[i] = c * x[i];
    }
    free(t);
    return st;
}
