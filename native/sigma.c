/* sigma.c -- local intensity scale on the half-resolution smoothed image:
 *     sigma = c * mean_w2(|S - mean_w1(S)|)
 * with separable box means of half-widths w1, w2 (chosen from the psf size),
 * reflective borders (about the edge sample), applied only along "active"
 * axes (more than max(w1, w2) samples). The constants c (for 1, 2 or 3 active
 * axes) are LibAPR's rescaling factors. With no active axis the scale is the
 * constant mean(S) - min(S). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "aprnet.h"
#include "formation_internal.h"

#define FM_CHUNK_S 512

static const int win1_table[6] = {1, 1, 1, 2, 2, 3};
static const int win2_table[6] = {2, 3, 4, 4, 5, 6};
static const double rescale_3d[6] = {12.8214, 26.1256, 40.2795, 23.3692, 36.2061, 27.0385};
static const double rescale_2d[6] = {13.2421, 28.7069, 52.0385, 24.4272, 34.9565, 21.1891};
static const double rescale_1d[6] = {13.9040, 31.2843, 57.4037, 30.3767, 45.9930, 29.0890};

/* Box mean of half-width w along axis (0 = z, 1 = y, 2 = x), out of place. */
static int box_axis(const float *in, float *out, fm_dims d, int axis, int w) {
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
                if (!pad) continue;
                const float *src = in + r * nx;
                float *dst = out + r * nx;
                for (int64_t i = -w; i < 0; ++i) pad[i + w] = src[fm_mirror(i, nx)];
                memcpy(pad + w, src, sizeof(float) * (size_t)nx);
                for (int64_t i = nx; i < nx + w; ++i) pad[i + w] = src[fm_mirror(i, nx)];
                for (int64_t x = 0; x < nx; ++x) dst[x] = pad[x];
                for (int j = 1; j <= 2 * w; ++j) {
                    const float *pj = pad + j;
                    for (int64_t x = 0; x < nx; ++x) dst[x] += pj[x];
                }
                for (int64_t x = 0; x < nx; ++x) dst[x] *= inv;
            }
            free(pad);
        }
        return status;
    }
    const int64_t n = axis == 1 ? ny : nz;
    const int64_t stride = axis == 1 ? nx : plane;
    const int64_t width = axis == 1 ? nx : plane;
    const int64_t nouter = axis == 1 ? nz : 1;
    const int64_t nchunks = (width + FM_CHUNK_S - 1) / FM_CHUNK_S;
#pragma omp parallel for schedule(static)
    for (int64_t job = 0; job < nouter * nchunks * n; ++job) {
        const int64_t i = job % n, oc = job / n;
        const int64_t o = oc / nchunks, k0 = (oc % nchunks) * FM_CHUNK_S;
        const int64_t wd = (k0 + FM_CHUNK_S <= width) ? FM_CHUNK_S : width - k0;
        float acc[FM_CHUNK_S];
        for (int64_t k = 0; k < wd; ++k) acc[k] = 0.0f;
        for (int j = -w; j <= w; ++j) {
            const float *src = in + o * plane + fm_mirror(i + j, n) * stride + k0;
            for (int64_t k = 0; k < wd; ++k) acc[k] += src[k];
        }
        float *dst = out + o * plane + i * stride + k0;
        for (int64_t k = 0; k < wd; ++k) dst[k] = acc[k] * inv;
    }
    return status;
}

int aprnet_fm_local_intensity_scale(const float *smooth, fm_dims d, int psf, float *sigma) {
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
    int st = APRNET_OK;
    /* first mean, ping-pong between sigma and t */
    const float *cur = smooth;
    for (int axis = 2; axis >= 0 && st == APRNET_OK; --axis) {
        if (!active[axis]) continue;
        float *dst = (cur == sigma) ? t : sigma;
        st = box_axis(cur, dst, d, axis, w1);
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
        st = box_axis(x, dst, d, axis, w2);
        x = dst;
    }
    if (st == APRNET_OK) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; ++i) sigma[i] = c * x[i];
    }
    free(t);
    return st;
}
