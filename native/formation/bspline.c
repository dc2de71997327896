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
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "aprnet.h"
#include "fm_common.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#define FM_SSE 1
#endif

#define FM_TOL 1e-4
#define FM_CHUNK 512 /* values per vector block for the y and z passes */
#define FM_BLOCK_BYTES (512 << 10) /* column block of the strided passes */
#define FM_FAR_STRIDE (64 << 10)   /* strides (bytes) from which blocks are copied */
#define FM_TILE 32   /* rows transposed together for the x pass */

typedef struct {
    float b1, b2, norm;
    int64_t K;      /* truncation length of the boundary sums */
    double *h;      /* causal impulse response, K + 2 terms */
    double *g;      /* two-sided (autocorrelation) response, K + 2 terms */
} fm_spline;

/* Longest truncation of the boundary sums accepted (lambda ~ 1e12; Python
 * allows lambda <= 1e6, K = 412): the set-up costs about 4.5 K^2 and the
 * boundary sums K per line. */
#define FM_KMAX 16384.0

static int spline_init(fm_spline *s, double lambda, const int32_t *cancel) {
    s->h = s->g = NULL;
    double r = sqrt(3.0 + 144.0 * lambda);
    double xi = 1.0 - 96.0 * lambda + 24.0 * lambda * r;
    double rho = (24.0 * lambda - 1.0 - sqrt(xi)) / (24.0 * lambda) *
                 sqrt((48.0 * lambda + 24.0 * lambda * r) / xi);
    double omega = atan(sqrt((144.0 * lambda - 1.0) / xi));
    double b1 = 2.0 * rho * cos(omega);
    double b2 = -rho * rho;
    double arho = fabs(rho);
    if (!(arho > 0.0 && arho < 1.0) || !isfinite(b1)) return APRNET_ERR_ARG;
    const double Kd = ceil(fabs(log(FM_TOL) / log(arho)));
    /* long enough for the autocorrelation sums to converge in double */
    const double Md = Kd + 2.0 + ceil(fabs(log(1e-14) / log(arho)));
    if (!(Kd <= FM_KMAX)) return APRNET_ERR_ARG;
    const int64_t K = Kd < 2.0 ? 2 : (int64_t)Kd, M = (int64_t)Md;
    s->b1 = (float)b1;
    s->b2 = (float)b2;
    s->norm = (float)((1.0 - b1 - b2) * (1.0 - b1 - b2));
    s->K = K;
    double *h = malloc(sizeof(double) * (size_t)(M + K + 2));
    s->g = malloc(sizeof(double) * (size_t)(K + 2));
    if (!h || !s->g) {
        free(h);
        free(s->g);
        s->g = NULL;
        return APRNET_ERR_NOMEM;
    }
    h[0] = 1.0;
    h[1] = b1;
    for (int64_t k = 2; k < M + K + 2; ++k) h[k] = b1 * h[k - 1] + b2 * h[k - 2];
    for (int64_t k = 0; k < K + 2; ++k) {
        if ((k & 255) == 0 && fm_cancelled(cancel)) {
            free(h);
            free(s->g);
            s->g = NULL;
            return APRNET_ERR_CANCELLED;
        }
        double acc = 0.0;
        for (int64_t m = 0; m < M; ++m) acc += h[m] * h[m + k];
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
    const int64_t K = s->K;
    for (int64_t j = 0; j < K; ++j) {
        c[0 * L + fm_mirror(0 - j, n)] += s->h[j];
        c[1 * L + fm_mirror(1 - j, n)] += s->h[j];
    }
    for (int64_t m = -(K - 1); m <= K - 1; ++m) {
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
#if defined(__GNUC__)
#define FM_INLINE inline __attribute__((always_inline))
#else
#define FM_INLINE inline
#endif

/* With zs (the z pass of a block, aprnet_formation_spline_z) the causal
 * recursion continues from zs->in (the causal values of the two lines before
 * line 0, line -2 first) instead of starting at a mirror boundary, and the
 * causal values of lines keep - 2 and keep - 1 are copied to zs->out. */
typedef struct {
    const float *in; /* NULL: mirror boundary before line 0 */
    float *out;      /* NULL: nothing kept */
    int64_t stride;  /* between the two lines of in and out */
    int64_t keep;
} fm_zstate;

static FM_INLINE void filter_lines(float *restrict base, int64_t n, int64_t stride, int64_t width,
                                   const fm_spline *s, const double *c, int64_t L,
                                   float *restrict tmp, const fm_zstate *zs) {
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
    if (zs && zs->in) {
        const float *m2 = zs->in, *m1 = zs->in + zs->stride;
        float *l1 = base + stride;
        for (int64_t k = 0; k < width; ++k) base[k] = base[k] + b1 * m1[k] + b2 * m2[k];
        for (int64_t k = 0; k < width; ++k) l1[k] = l1[k] + b1 * base[k] + b2 * m1[k];
    } else {
        memcpy(base, y0, sizeof(float) * (size_t)width);
        memcpy(base + stride, y1, sizeof(float) * (size_t)width);
    }
    for (int64_t i = 2; i < n; ++i) {
        float *cur = base + i * stride;
        const float *p1 = cur - stride, *p2 = cur - 2 * stride;
        for (int64_t k = 0; k < width; ++k) cur[k] = cur[k] + b1 * p1[k] + b2 * p2[k];
    }
    if (zs && zs->out) {
        memcpy(zs->out, base + (zs->keep - 2) * stride, sizeof(float) * (size_t)width);
        memcpy(zs->out + zs->stride, base + (zs->keep - 1) * stride, sizeof(float) * (size_t)width);
    }
    /* anti-causal pass on the unnormalised z: zN1 starts as z[n-1] = z[i+2] and
     * zN2 as z[n-2] = z[i+1] for i = n-3; each step overwrites the older one
     * (fixed roles, two steps per iteration, so the loops vectorise) */
    float *line_last = base + (n - 1) * stride, *line_prev = base + (n - 2) * stride;
    for (int64_t k = 0; k < width; ++k) {
        line_last[k] = norm * zN1[k];
        line_prev[k] = norm * zN2[k];
    }
    (void)za;
    for (int64_t i = n - 3; i >= 0; i -= 2) {
        float *cur = base + i * stride;
        for (int64_t k = 0; k < width; ++k) { /* z[i+1] in zN2, z[i+2] in zN1 */
            const float z = cur[k] + b1 * zN2[k] + b2 * zN1[k];
            cur[k] = norm * z;
            zN1[k] = z;
        }
        if (i == 0) break;
        cur -= stride;
        for (int64_t k = 0; k < width; ++k) { /* z[i] in zN1, z[i+1] in zN2 */
            const float z = cur[k] + b1 * zN1[k] + b2 * zN2[k];
            cur[k] = norm * z;
            zN2[k] = z;
        }
    }
}

static void filter_block(float *base, int64_t n, int64_t stride, int64_t width,
                         const fm_spline *s, const double *c, int64_t L, float *tmp, const fm_zstate *zs) {
    filter_lines(base, n, stride, width, s, c, L, tmp, zs);
}

/* the same for the FM_TILE lines of a transposed tile (constant width: the
 * compiler unrolls the vector loops) */
static void filter_tile(float *base, int64_t n, const fm_spline *s, const double *c, int64_t L,
                        float *tmp) {
    filter_lines(base, n, FM_TILE, FM_TILE, s, c, L, tmp, NULL);
}

/* ----- x pass: tiles of FM_TILE rows transposed so that the recursion runs
 * along x with one row per vector lane ----- */

#ifdef FM_SSE
/* 4 consecutive values of a typed image from element i, as floats */
static inline __m128 load4(const void *src, int dtype, int64_t i) {
    const __m128i zero = _mm_setzero_si128();
    if (dtype == APRNET_DTYPE_U16) {
        __m128i v = _mm_loadl_epi64((const __m128i *)((const uint16_t *)src + i));
        return _mm_cvtepi32_ps(_mm_unpacklo_epi16(v, zero));
    }
    if (dtype == APRNET_DTYPE_U8) {
        int32_t w;
        memcpy(&w, (const uint8_t *)src + i, sizeof w);
        __m128i v = _mm_unpacklo_epi8(_mm_cvtsi32_si128(w), zero);
        return _mm_cvtepi32_ps(_mm_unpacklo_epi16(v, zero));
    }
    return _mm_loadu_ps((const float *)src + i);
}
#endif

/* buf[x * FM_TILE + r] = row (row0 + r) of the typed image, 0 for r >= nr */
static void tile_load(float *restrict buf, const void *src, int dtype, int64_t row0, int64_t nr,
                      int64_t nx) {
    int64_t x0 = 0;
#ifdef FM_SSE
    if (nr == FM_TILE) {
        const int64_t nx4 = nx & ~(int64_t)3;
        for (int r = 0; r < FM_TILE; r += 4) { /* 4 input rows at a time: few streams */
            for (x0 = 0; x0 < nx4; x0 += 4) {
                const int64_t i = (row0 + r) * nx + x0;
                __m128 a = load4(src, dtype, i), b = load4(src, dtype, i + nx);
                __m128 c = load4(src, dtype, i + 2 * nx), e = load4(src, dtype, i + 3 * nx);
                _MM_TRANSPOSE4_PS(a, b, c, e);
                float *o = buf + x0 * FM_TILE + r;
                _mm_storeu_ps(o, a);
                _mm_storeu_ps(o + FM_TILE, b);
                _mm_storeu_ps(o + 2 * FM_TILE, c);
                _mm_storeu_ps(o + 3 * FM_TILE, e);
            }
        }
    }
#endif
    for (int64_t x = x0; x < nx; ++x) {
        for (int64_t r = 0; r < nr; ++r) buf[x * FM_TILE + r] = fm_load_one(src, dtype, (row0 + r) * nx + x);
        for (int64_t r = nr; r < FM_TILE; ++r) buf[x * FM_TILE + r] = 0.0f;
    }
}

/* row (row0 + r) of img = buf[x * FM_TILE + r], r < nr */
static void tile_store(const float *restrict buf, float *restrict img, int64_t row0, int64_t nr,
                       int64_t nx) {
    int64_t x0 = 0;
#ifdef FM_SSE
    if (nr == FM_TILE) {
        const int64_t nx4 = nx & ~(int64_t)3;
        for (int r = 0; r < FM_TILE; r += 4) { /* 4 output rows at a time */
            for (x0 = 0; x0 < nx4; x0 += 4) {
                const float *q = buf + x0 * FM_TILE + r;
                __m128 a = _mm_loadu_ps(q), b = _mm_loadu_ps(q + FM_TILE);
                __m128 c = _mm_loadu_ps(q + 2 * FM_TILE), e = _mm_loadu_ps(q + 3 * FM_TILE);
                _MM_TRANSPOSE4_PS(a, b, c, e);
                float *o = img + (row0 + r) * nx + x0;
                _mm_storeu_ps(o, a);
                _mm_storeu_ps(o + nx, b);
                _mm_storeu_ps(o + 2 * nx, c);
                _mm_storeu_ps(o + 3 * nx, e);
            }
        }
    }
#endif
    for (int64_t x = x0; x < nx; ++x)
        for (int64_t r = 0; r < nr; ++r) img[(row0 + r) * nx + x] = buf[x * FM_TILE + r];
}

/* Thread-local scratch of the x pass: the transposed tile and 5 * FM_TILE temporaries. */
static float *xpass_scratch(int64_t nx) {
    return malloc(sizeof(float) * (size_t)(nx * FM_TILE + 5 * FM_TILE));
}

/* x pass over rows [row0, row0 + nrows) of img, read from the typed image
 * src (img itself when src is NULL, dtype F32). */
static void xpass_rows(float *img, int64_t nx, int64_t row0, int64_t nrows, const void *src, int dtype,
                       const fm_spline *s, const double *c, int64_t L, float *scratch) {
    for (int64_t r0 = row0; r0 < row0 + nrows; r0 += FM_TILE) {
        const int64_t nr = (r0 + FM_TILE <= row0 + nrows) ? FM_TILE : row0 + nrows - r0;
        tile_load(scratch, src, dtype, r0, nr, nx);
        filter_tile(scratch, nx, s, c, L, scratch + nx * FM_TILE);
        tile_store(scratch, img, r0, nr, nx);
    }
}

static int smooth_axis_x(float *img, fm_dims d, const fm_spline *s, const void *src, int dtype,
                         const int32_t *cancel) {
    const int64_t nx = d.nx, nrows = d.nz * d.ny;
    if (!src) {
        src = img;
        dtype = APRNET_DTYPE_F32;
    }
    int64_t L;
    double *c = boundary_coefs(s, nx, &L);
    if (!c) return APRNET_ERR_NOMEM;
    const int64_t ntiles = (nrows + FM_TILE - 1) / FM_TILE;
    int status = APRNET_OK;
#pragma omp parallel
    {
        float *buf = xpass_scratch(nx);
        if (!buf) {
#pragma omp atomic write
            status = APRNET_ERR_NOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < ntiles; ++t) {
            if (!buf || fm_cancelled(cancel)) continue;
            const int64_t r0 = t * FM_TILE;
            xpass_rows(img, nx, r0, (r0 + FM_TILE <= nrows) ? FM_TILE : nrows - r0, src, dtype, s, c, L, buf);
        }
        free(buf);
    }
    free(c);
    if (status == APRNET_OK && fm_cancelled(cancel)) status = APRNET_ERR_CANCELLED;
    return status;
}

/* y pass (n = ny, stride = nx, vectors over x) or z pass (n = nz,
 * stride = ny * nx, vectors over the plane; with state_in / state_out, two
 * planes each, the causal state of a block: see fm_zstate). */
static int smooth_axis_strided(float *img, int64_t nouter, int64_t outer_stride, int64_t n,
                               int64_t stride, int64_t width_total, const fm_spline *s,
                               const float *state_in, float *state_out, int64_t keep,
                               const int32_t *cancel) {
    int64_t L;
    double *c = boundary_coefs(s, n, &L);
    if (!c) return APRNET_ERR_NOMEM;
    /* For large strides each job copies a block of w columns (all n lines)
     * into a contiguous buffer of about FM_BLOCK_BYTES, filters it there and
     * copies it back: lines far apart in memory would otherwise evict each
     * other from the cache between the causal and the anti-causal pass. */
    const int copy = stride * (int64_t)sizeof(float) >= FM_FAR_STRIDE;
    int64_t wmax = FM_CHUNK;
    if (copy) {
        wmax = FM_BLOCK_BYTES / (int64_t)sizeof(float) / n;
        wmax = wmax < 16 ? 16 : wmax > FM_CHUNK ? FM_CHUNK : wmax & ~(int64_t)15;
    }
    const int64_t nchunks = (width_total + wmax - 1) / wmax;
    const int64_t njobs = nouter * nchunks;
    int status = APRNET_OK;
#pragma omp parallel
    {
        float *buf = malloc(sizeof(float) * (size_t)((copy ? n + 5 : 5) * wmax));
        if (!buf) {
#pragma omp atomic write
            status = APRNET_ERR_NOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t job = 0; job < njobs; ++job) {
            if (!buf || fm_cancelled(cancel)) continue;
            const int64_t o = job / nchunks, k0 = (job % nchunks) * wmax;
            const int64_t w = (k0 + wmax <= width_total) ? wmax : width_total - k0;
            float *base = img + o * outer_stride + k0;
            const fm_zstate zs = {state_in ? state_in + k0 : NULL, state_out ? state_out + k0 : NULL,
                                  width_total, keep};
            const fm_zstate *zsp = (state_in || state_out) ? &zs : NULL;
            if (!copy) {
                filter_block(base, n, stride, w, s, c, L, buf, zsp);
                continue;
            }
            for (int64_t i = 0; i < n; ++i) memcpy(buf + i * w, base + i * stride, sizeof(float) * (size_t)w);
            filter_block(buf, n, w, w, s, c, L, buf + n * w, zsp);
            for (int64_t i = 0; i < n; ++i) memcpy(base + i * stride, buf + i * w, sizeof(float) * (size_t)w);
        }
        free(buf);
    }
    free(c);
    if (status == APRNET_OK && fm_cancelled(cancel)) status = APRNET_ERR_CANCELLED;
    return status;
}

static void load_all(float *img, fm_dims d, const void *src, int dtype) {
    const int64_t nrows = d.nz * d.ny;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nrows; ++r) aprnet_fm_load_row(src, dtype, r * d.nx, d.nx, img + r * d.nx);
}

/* x and y passes plane by plane, one plane per thread at a time, so that the
 * y pass reads a plane the x pass has just left in cache. Same arithmetic per
 * line as smooth_axis_x + smooth_axis_strided. */
static int smooth_planes_xy(float *img, fm_dims d, const fm_spline *s, const void *src, int dtype,
                            const int32_t *cancel) {
    const int64_t nx = d.nx, ny = d.ny, plane = nx * ny;
    if (!src) {
        src = img;
        dtype = APRNET_DTYPE_F32;
    }
    int64_t Lx = 0, Ly = 0;
    double *cx = nx > 1 ? boundary_coefs(s, nx, &Lx) : NULL;
    double *cy = ny > 1 ? boundary_coefs(s, ny, &Ly) : NULL;
    if ((nx > 1 && !cx) || (ny > 1 && !cy)) {
        free(cx);
        free(cy);
        return APRNET_ERR_NOMEM;
    }
    int status = APRNET_OK;
#pragma omp parallel
    {
        float *buf = xpass_scratch(nx);
        float tmp[5 * FM_CHUNK];
        if (!buf) {
#pragma omp atomic write
            status = APRNET_ERR_NOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t z = 0; z < d.nz; ++z) {
            if (!buf || fm_cancelled(cancel)) continue;
            if (nx > 1) xpass_rows(img, nx, z * ny, ny, src, dtype, s, cx, Lx, buf);
            else if (src != img)
                aprnet_fm_load_row(src, dtype, z * plane, plane, img + z * plane);
            if (ny > 1)
                for (int64_t k0 = 0; k0 < nx; k0 += FM_CHUNK)
                    filter_block(img + z * plane + k0, ny, nx, (k0 + FM_CHUNK <= nx) ? FM_CHUNK : nx - k0,
                                 s, cy, Ly, tmp, NULL);
        }
        free(buf);
    }
    free(cx);
    free(cy);
    if (status == APRNET_OK && fm_cancelled(cancel)) status = APRNET_ERR_CANCELLED;
    return status;
}

int aprnet_fm_smoothing_spline(float *img, fm_dims d, double lambda, const void *src, int dtype,
                               int skip_z, const int32_t *cancel) {
    if (!(lambda > 0.0)) { /* lambda = 0: no smoothing */
        if (src) load_all(img, d, src, dtype);
        return APRNET_OK;
    }
    fm_spline s;
    int st = spline_init(&s, lambda, cancel);
    if (st != APRNET_OK) return st;
    if (d.nz > 1 && d.nz >= 4 * (int64_t)omp_get_max_threads()) {
        st = smooth_planes_xy(img, d, &s, src, dtype, cancel);
    } else {
        if (d.nx > 1) st = smooth_axis_x(img, d, &s, src, dtype, cancel);
        else if (src) load_all(img, d, src, dtype);
        if (st == APRNET_OK && d.ny > 1)
            st = smooth_axis_strided(img, d.nz, d.ny * d.nx, d.ny, d.nx, d.nx, &s, NULL, NULL, 0, cancel);
    }
    if (st == APRNET_OK && d.nz > 1 && !skip_z)
        st = smooth_axis_strided(img, 1, 0, d.nz, d.ny * d.nx, d.ny * d.nx, &s, NULL, NULL, 0, cancel);
    spline_free(&s);
    return st;
}

/* The z pass of a block of a longer volume: see aprnet_formation_spline_z. */
int aprnet_fm_spline_z_block(float *img, fm_dims d, double lambda, const float *state_in, int64_t keep,
                             float *state_out, const int32_t *cancel) {
    fm_spline s;
    int st = spline_init(&s, lambda, cancel);
    if (st != APRNET_OK) return st;
    const int64_t plane = d.ny * d.nx;
    st = smooth_axis_strided(img, 1, 0, d.nz, plane, plane, &s, state_in, state_out, keep, cancel);
    spline_free(&s);
    return st;
}

/* ----- the filter along lines of one length, for callers that run the last
 * pass themselves (gradient.c) ----- */

struct fm_line_filter {
    fm_spline s;
    double *c; /* boundary coefficients for length n */
    int64_t L, n;
};

int aprnet_fm_line_filter_new(double lambda, int64_t n, fm_line_filter **out, const int32_t *cancel) {
    *out = NULL;
    if (n < 2) return APRNET_ERR_ARG;
    fm_line_filter *f = malloc(sizeof *f);
    if (!f) return APRNET_ERR_NOMEM;
    int st = spline_init(&f->s, lambda, cancel);
    if (st != APRNET_OK) {
        free(f);
        return st;
    }
    f->n = n;
    f->c = boundary_coefs(&f->s, n, &f->L);
    if (!f->c) {
        spline_free(&f->s);
        free(f);
        return APRNET_ERR_NOMEM;
    }
    *out = f;
    return APRNET_OK;
}

void aprnet_fm_line_filter_free(fm_line_filter *f) {
    if (!f) return;
    spline_free(&f->s);
    free(f->c);
    free(f);
}

void aprnet_fm_line_filter_apply(const fm_line_filter *f, float *base, int64_t width, float *tmp) {
    filter_block(base, f->n, width, width, &f->s, f->c, f->L, tmp, NULL);
}

/* ----- inverse B-spline kernel [1/6, 4/6, 1/6], mirror boundaries ----- */

int aprnet_fm_inverse_bspline(float *img, fm_dims d, const int32_t *cancel) {
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
                if (!row || fm_cancelled(cancel)) continue;
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
                if (fm_cancelled(cancel)) continue;
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
    return fm_cancelled(cancel) ? APRNET_ERR_CANCELLED : APRNET_OK;
}
