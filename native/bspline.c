/* bspline.c -- separable recursive smoothing-spline filter (Unser's cubic
 * smoothing spline with parameter lambda) and the inverse B-spline kernel.
 *
 * The filter along one axis is
 *     H(z) = norm / ((1 - b1 z^-1 - b2 z^-2) (1 - b1 z - b2 z^2)),
 * with poles rho * exp(+-i omega) (formulas of Unser 1993, as in LibAPR) and
 * norm = (1 - b1 - b2)^2 so that constants are preserved. Boundaries are
 * mirror-symmetric (f[-k] = f[k]); the causal and anti-causal recursions are
 * started from their exact values on the mirrored signal, truncated after
 * K = ceil(|log(tol) / log(rho)|) terms (tol = 1e-4).
 *
 * Every line is handled by one thread with the same arithmetic whatever the
 * number of threads, so results do not depend on OpenMP scheduling.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "aprnet.h"
#include "formation_internal.h"

#define FM_TOL 1e-4
#define FM_CHUNK 512 /* values per vector block for the y and z passes */
#define FM_TILE 16   /* rows transposed together for the x pass */

typedef struct {
    float b1, b2, norm;
    int K;          /* truncation length of the boundary sums */
    double *h;      /* causal impulse response, K + 2 terms */
    double *g;      /* two-sided (autocorrelation) response, K + 2 terms */
} fm_spline;

static int spline_init(fm_spline *s, double lambda) {
    double r = sqrt(3.0 + 144.0 * lambda);
    double xi = 1.0 - 96.0 * lambda + 24.0 * lambda * r;
    double rho = (24.0 * lambda - 1.0 - sqrt(xi)) / (24.0 * lambda) *
                 sqrt((48.0 * lambda + 24.0 * lambda * r) / xi);
    double omega = atan(sqrt((144.0 * lambda - 1.0) / xi));
    double b1 = 2.0 * rho * cos(omega);
    double b2 = -rho * rho;
    double arho = fabs(rho);
    if (!(arho > 0.0 && arho < 1.0) || !isfinite(b1)) return APRNET_ERR_ARG;
    int K = (int)ceil(fabs(log(FM_TOL) / log(arho)));
    if (K < 2) K = 2;
    s->b1 = (float)b1;
    s->b2 = (float)b2;
    s->norm = (float)((1.0 - b1 - b2) * (1.0 - b1 - b2));
    s->K = K;
    /* long enough for the autocorrelation sums to converge in double */
    int M = K + 2 + (int)ceil(fabs(log(1e-14) / log(arho)));
    double *h = malloc(sizeof(double) * (size_t)(M + K + 2));
    s->g = malloc(sizeof(double) * (size_t)(K + 2));
    if (!h || !s->g) {
        free(h);
        free(s->g);
        return APRNET_ERR_NOMEM;
    }
    h[0] = 1.0;
    h[1] = b1;
    for (int k = 2; k < M + K + 2; ++k) h[k] = b1 * h[k - 1] + b2 * h[k - 2];
    for (int k = 0; k < K + 2; ++k) {
        double acc = 0.0;
        for (int m = 0; m < M; ++m) acc += h[m] * h[m + k];
        s->g[k] = acc;
    }
    s->h = h;
    return APRNET_OK;
}

static void spline_free(fm_spline *s) {
    free(s->h);
    free(s->g);
}

/* Folded boundary coefficients for a line of length n (n >= 2):
 * y0 = sum_j c[0][j] f[j], y1 = sum_j c[1][j] f[j],
 * zN1 = sum_j c[2][j] f[n-1-j], zN2 = sum_j c[3][j] f[n-1-j],
 * for j < L = min(n, K + 2). */
static double *boundary_coefs(const fm_spline *s, int64_t n, int64_t *L_out) {
    int64_t L = n < s->K + 2 ? n : s->K + 2;
    double *c = calloc((size_t)(4 * L), sizeof(double));
    if (!c) return NULL;
    int K = s->K;
    for (int j = 0; j < K; ++j) {
        c[0 * L + fm_mirror(0 - j, n)] += s->h[j];
        c[1 * L + fm_mirror(1 - j, n)] += s->h[j];
    }
    for (int m = -(K - 1); m <= K - 1; ++m) {
        double w = s->g[m < 0 ? -m : m];
        /* index counted from the end: position n-1-m (resp. n-2-m) */
        int64_t i1 = fm_mirror(n - 1 - m, n);
        int64_t i2 = fm_mirror(n - 2 - m, n);
        c[2 * L + (n - 1 - i1)] += w;
        c[3 * L + (n - 1 - i2)] += w;
    }
    /* rescale the truncated sums to the exact DC gains so that constant
     * signals are reproduced exactly */
    const double dc = 1.0 / (1.0 - (double)s->b1 - (double)s->b2);
    const double gains[4] = {dc, dc, dc * dc, dc * dc};
    for (int r = 0; r < 4; ++r) {
        double sum = 0.0;
        for (int64_t j = 0; j < L; ++j) sum += c[r * L + j];
        if (sum != 0.0)
            for (int64_t j = 0; j < L; ++j) c[r * L + j] *= gains[r] / sum;
    }
    *L_out = L;
    return c;
}

/* Filter a block of `width` parallel lines of length n: element (i, k) is
 * base[i * stride + k]. tmp holds 5 * width floats. */
static void filter_block(float *base, int64_t n, int64_t stride, int64_t width,
                         const fm_spline *s, const double *c, int64_t L, float *tmp) {
    float *y0 = tmp, *y1 = tmp + width, *zN1 = tmp + 2 * width, *zN2 = tmp + 3 * width;
    float *za = tmp + 4 * width;
    const float b1 = s->b1, b2 = s->b2, norm = s->norm;
    for (int64_t k = 0; k < width; ++k) y0[k] = y1[k] = zN1[k] = zN2[k] = 0.0f;
    for (int64_t j = 0; j < L; ++j) {
        const float c0 = (float)c[j], c1 = (float)c[L + j];
        const float c2 = (float)c[2 * L + j], c3 = (float)c[3 * L + j];
        const float *fa = base + j * stride;
        const float *fb = base + (n - 1 - j) * stride;
        for (int64_t k = 0; k < width; ++k) {
            y0[k] += c0 * fa[k];
            y1[k] += c1 * fa[k];
            zN1[k] += c2 * fb[k];
            zN2[k] += c3 * fb[k];
        }
    }
    /* causal pass, in place */
    memcpy(base, y0, sizeof(float) * (size_t)width);
    memcpy(base + stride, y1, sizeof(float) * (size_t)width);
    for (int64_t i = 2; i < n; ++i) {
        float *cur = base + i * stride;
        const float *p1 = cur - stride, *p2 = cur - 2 * stride;
        for (int64_t k = 0; k < width; ++k) cur[k] = cur[k] + b1 * p1[k] + b2 * p2[k];
    }
    /* anti-causal pass: zN1 holds z[i+2], za holds z[i+1] (unnormalised) */
    float *zi2 = zN1, *zi1 = zN2;
    float *line_last = base + (n - 1) * stride, *line_prev = base + (n - 2) * stride;
    for (int64_t k = 0; k < width; ++k) {
        line_last[k] = norm * zi2[k];
        line_prev[k] = norm * zi1[k];
    }
    for (int64_t i = n - 3; i >= 0; --i) {
        float *cur = base + i * stride;
        for (int64_t k = 0; k < width; ++k) {
            float z = cur[k] + b1 * zi1[k] + b2 * zi2[k];
            cur[k] = norm * z;
            za[k] = z;
        }
        float *t = zi2;
        zi2 = zi1;
        zi1 = za;
        za = t;
    }
}

/* x pass; when src is not NULL the input rows are read (and converted) from
 * the typed image src instead of img, which then only receives the output. */
static int smooth_axis_x(float *img, fm_dims d, const fm_spline *s, const void *src, int dtype,
                         const int32_t *cancel) {
    const int64_t nx = d.nx, nrows = d.nz * d.ny;
    int64_t L;
    double *c = boundary_coefs(s, nx, &L);
    if (!c) return APRNET_ERR_NOMEM;
    const int64_t ntiles = (nrows + FM_TILE - 1) / FM_TILE;
    int status = APRNET_OK;
#pragma omp parallel
    {
        float *buf = malloc(sizeof(float) * (size_t)(nx * FM_TILE + 5 * FM_TILE + nx));
        if (!buf) {
#pragma omp atomic write
            status = APRNET_ERR_NOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < ntiles; ++t) {
            if (!buf || fm_cancelled(cancel)) continue;
            const int64_t r0 = t * FM_TILE;
            const int64_t nr = (r0 + FM_TILE <= nrows) ? FM_TILE : nrows - r0;
            float *tmp = buf + nx * FM_TILE;
            /* transpose the rows into buf[x * FM_TILE + r] */
            float *rowbuf = tmp + 5 * FM_TILE;
            for (int64_t r = 0; r < nr; ++r) {
                const float *row = img + (r0 + r) * nx;
                if (src) {
                    aprnet_fm_load_row(src, dtype, (r0 + r) * nx, nx, rowbuf);
                    row = rowbuf;
                }
                for (int64_t x = 0; x < nx; ++x) buf[x * FM_TILE + r] = row[x];
            }
            for (int64_t r = nr; r < FM_TILE; ++r)
                for (int64_t x = 0; x < nx; ++x) buf[x * FM_TILE + r] = 0.0f;
            filter_block(buf, nx, FM_TILE, FM_TILE, s, c, L, tmp);
            for (int64_t r = 0; r < nr; ++r) {
                float *row = img + (r0 + r) * nx;
                for (int64_t x = 0; x < nx; ++x) row[x] = buf[x * FM_TILE + r];
            }
        }
        free(buf);
    }
    free(c);
    if (status == APRNET_OK && fm_cancelled(cancel)) status = APRNET_ERR_CANCELLED;
    return status;
}

/* y pass (n = ny, stride = nx, vectors over x) or z pass (n = nz,
 * stride = ny * nx, vectors over the plane). */
static int smooth_axis_strided(float *img, int64_t nouter, int64_t outer_stride, int64_t n,
                               int64_t stride, int64_t width_total, const fm_spline *s,
                               const int32_t *cancel) {
    int64_t L;
    double *c = boundary_coefs(s, n, &L);
    if (!c) return APRNET_ERR_NOMEM;
    const int64_t nchunks = (width_total + FM_CHUNK - 1) / FM_CHUNK;
    const int64_t njobs = nouter * nchunks;
    int status = APRNET_OK;
#pragma omp parallel
    {
        float tmp[5 * FM_CHUNK];
#pragma omp for schedule(static)
        for (int64_t job = 0; job < njobs; ++job) {
            if (fm_cancelled(cancel)) continue;
            const int64_t o = job / nchunks, ch = job % nchunks;
            const int64_t k0 = ch * FM_CHUNK;
            const int64_t w = (k0 + FM_CHUNK <= width_total) ? FM_CHUNK : width_total - k0;
            filter_block(img + o * outer_stride + k0, n, stride, w, s, c, L, tmp);
        }
    }
    free(c);
    if (fm_cancelled(cancel)) status = APRNET_ERR_CANCELLED;
    return status;
}

static void load_all(float *img, fm_dims d, const void *src, int dtype) {
    const int64_t nrows = d.nz * d.ny;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nrows; ++r) aprnet_fm_load_row(src, dtype, r * d.nx, d.nx, img + r * d.nx);
}

int aprnet_fm_smoothing_spline(float *img, fm_dims d, double lambda, const void *src, int dtype,
                               const int32_t *cancel) {
    if (!(lambda > 0.0)) { /* lambda = 0: no smoothing */
        if (src) load_all(img, d, src, dtype);
        return APRNET_OK;
    }
    fm_spline s;
    int st = spline_init(&s, lambda);
    if (st != APRNET_OK) return st;
    if (d.nx > 1) st = smooth_axis_x(img, d, &s, src, dtype, cancel);
    else if (src) load_all(img, d, src, dtype);
    if (st == APRNET_OK && d.ny > 1)
        st = smooth_axis_strided(img, d.nz, d.ny * d.nx, d.ny, d.nx, d.nx, &s, cancel);
    if (st == APRNET_OK && d.nz > 1)
        st = smooth_axis_strided(img, 1, 0, d.nz, d.ny * d.nx, d.ny * d.nx, &s, cancel);
    spline_free(&s);
    return st;
}

/* ----- inverse B-spline kernel [1/6, 4/6, 1/6], mirror boundaries ----- */

int aprnet_fm_inverse_bspline(float *img, fm_dims d) {
    const float a = 1.0f / 6.0f, b = 4.0f / 6.0f;
    const int64_t nx = d.nx, ny = d.ny, nz = d.nz, plane = nx * ny;
    int status = APRNET_OK;
    if (nx > 1) {
#pragma omp parallel
        {
            float *row = malloc(sizeof(float) * (size_t)nx);
            if (!row) {
#pragma omp atomic write
                status = APRNET_ERR_NOMEM;
            }
#pragma omp for schedule(static)
            for (int64_t r = 0; r < nz * ny; ++r) {
                if (!row) continue;
                float *p = img + r * nx;
                memcpy(row, p, sizeof(float) * (size_t)nx);
                p[0] = b * row[0] + 2.0f * a * row[1];
                for (int64_t x = 1; x < nx - 1; ++x) p[x] = a * row[x - 1] + b * row[x] + a * row[x + 1];
                p[nx - 1] = b * row[nx - 1] + 2.0f * a * row[nx - 2];
            }
            free(row);
        }
        if (status != APRNET_OK) return status;
    }
    /* strided axes: keep the previous (original) line in a buffer */
    for (int axis = 0; axis < 2; ++axis) {
        const int64_t n = axis == 0 ? ny : nz;
        if (n <= 1) continue;
        const int64_t stride = axis == 0 ? nx : plane;
        const int64_t width = axis == 0 ? nx : plane;
        const int64_t nouter = axis == 0 ? nz : 1;
        const int64_t nchunks = (width + FM_CHUNK - 1) / FM_CHUNK;
#pragma omp parallel
        {
            float prev[FM_CHUNK], cur[FM_CHUNK];
#pragma omp for schedule(static)
            for (int64_t job = 0; job < nouter * nchunks; ++job) {
                const int64_t o = job / nchunks, k0 = (job % nchunks) * FM_CHUNK;
                const int64_t w = (k0 + FM_CHUNK <= width) ? FM_CHUNK : width - k0;
                float *base = img + o * plane + k0;
                for (int64_t i = 0; i < n; ++i) {
                    float *line = base + i * stride;
                    const float *next = base + (i + 1 < n ? i + 1 : n - 2) * stride;
                    for (int64_t k = 0; k < w; ++k) cur[k] = line[k];
                    if (i == 0) {
                        for (int64_t k = 0; k < w; ++k) line[k] = b * cur[k] + 2.0f * a * next[k];
                    } else if (i == n - 1) {
                        for (int64_t k = 0; k < w; ++k) line[k] = b * cur[k] + 2.0f * a * prev[k];
                    } else {
                        for (int64_t k = 0; k < w; ++k) line[k] = a * prev[k] + b * cur[k] + a * next[k];
                    }
                    for (int64_t k = 0; k < w; ++k) prev[k] = cur[k];
                }
            }
        }
    }
    return APRNET_OK;
}
