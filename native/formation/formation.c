/* formation.c -- public entry points of the APR formation pipeline:
 *   1. aprnet_formation_grad_sigma: smoothing spline, gradient magnitude
 *      (max-downsampled 2x) and local intensity scale (half resolution);
 *   2. aprnet_formation_levels: thresholds and the required level per
 *      half-resolution cell;
 *   3. aprnet_pulling_scheme / aprnet_pulling_emit (pulling.c): particle cells;
 *   4. aprnet_formation_sample: particle values = mean of the cell's pixels;
 * and aprnet_formation_histogram, the histogram of the automatic thresholds.
 * Large buffers come from aprnet_fm_alloc (fm_common.c, transparent huge pages).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "aprnet.h"
#include "fm_common.h"

#define FM_FUSE_BYTES ((int64_t)8 << 20) /* per-thread row buffers of the fused z pass */

int aprnet_formation_grad_sigma(const void *image, int dtype, const int64_t shape[3],
                                const double spacing[3], double lambda, int psf, float *grad_ds,
                                float *sigma_ds, float *smooth_ds, const int32_t *cancel) {
    if (!image || !fm_check_shape(shape) || !fm_check_dtype(dtype) || !spacing || !grad_ds ||
        !sigma_ds || !smooth_ds || !(lambda >= 0.0) || !isfinite(lambda) || psf < 1)
        return APRNET_ERR_ARG;
    for (int a = 0; a < 3; ++a)
        if (!(spacing[a] > 0.0) || !isfinite(spacing[a])) return APRNET_ERR_ARG;
    const fm_dims d = {shape[0], shape[1], shape[2]};
    const int64_t n = fm_size(d);
    float *work = aprnet_fm_alloc(sizeof(float) * (size_t)n);
    if (!work) return APRNET_ERR_NOMEM;
    /* 3D: the spline's z pass runs inside the gradient pass when its row
     * buffers are small enough to stay in cache */
    const int fuse_z = lambda > 0.0 && d.nz > 1 && aprnet_fm_zfused_bytes(d) <= FM_FUSE_BYTES;
    fm_line_filter *zf = NULL;
    int st = aprnet_fm_smoothing_spline(work, d, lambda, image, dtype, fuse_z, cancel);
    if (st == APRNET_OK && fm_cancelled(cancel)) st = APRNET_ERR_CANCELLED;
    if (st == APRNET_OK && fuse_z) st = aprnet_fm_line_filter_new(lambda, d.nz, &zf, cancel);
    if (st == APRNET_OK) {
        if (fuse_z) st = aprnet_fm_grad_mean_ds_zfilter(work, d, spacing, zf, grad_ds, smooth_ds, cancel);
        else st = aprnet_fm_grad_mean_ds(work, d, spacing, grad_ds, smooth_ds, cancel);
    }
    aprnet_fm_line_filter_free(zf);
    if (st == APRNET_OK && lambda > 0.0) st = aprnet_fm_inverse_bspline(smooth_ds, fm_half_dims(d), cancel);
    free(work);
    if (st == APRNET_OK && fm_cancelled(cancel)) st = APRNET_ERR_CANCELLED;
    if (st == APRNET_OK) st = aprnet_fm_local_intensity_scale(smooth_ds, fm_half_dims(d), psf, sigma_ds, cancel);
    return st;
}

int aprnet_formation_levels(const float *grad_ds, const float *sigma_ds, const float *smooth_ds,
                            const int64_t shape_ds[3], double ip_th, double sigma_th,
                            double sigma_th_max, double grad_th, double rel_error, int level_max,
                            double h_min, uint8_t *level_ds, const int32_t *cancel) {
    if (!grad_ds || !sigma_ds || !smooth_ds || !level_ds || !fm_check_shape(shape_ds) ||
        !(rel_error > 0.0) || !isfinite(rel_error) || !(h_min > 0.0) || level_max < 0 ||
        level_max > 60 || !isfinite(ip_th) || !isfinite(sigma_th) || !isfinite(sigma_th_max) ||
        !isfinite(grad_th))
        return APRNET_ERR_ARG;
    const int64_t n = shape_ds[0] * shape_ds[1] * shape_ds[2];
    const int64_t nx = shape_ds[2], nrows = shape_ds[0] * shape_ds[1];
    const double factor = ldexp(1.0, level_max) * h_min / rel_error;
    const float fip = (float)ip_th, fst = (float)sigma_th, fstm = (float)sigma_th_max, fgt = (float)grad_th;
    /* row by row, polling the cancel flag once per row */
#pragma omp parallel for schedule(static) if (n >= FM_PAR_MIN)
    for (int64_t r = 0; r < nrows; ++r) {
        if (fm_cancelled(cancel)) continue;
        for (int64_t i = r * nx; i < (r + 1) * nx; ++i) {
            float g = grad_ds[i];
            if (smooth_ds[i] <= fip) g = 0.0f;
            if (g < fgt) g = 0.0f;
            float s = sigma_ds[i];
            if (s < fst) s = (s < fstm) ? 60000.0f : fst;
            int L = 0;
            if (g > 0.0f) {
                if (!(s > 0.0f)) {
                    L = level_max;
                } else {
                    double v = (double)(g / s) * factor;
                    if (v >= 2.0) {
                        /* floor(log2(v)) from the exponent bits (v >= 2 is normal;
                         * inf gives 1024, then level_max) */
                        uint64_t bits;
                        memcpy(&bits, &v, sizeof bits);
                        L = (int)((bits >> 52) & 0x7ff) - 1023;
                        if (L > level_max || !isfinite(v)) L = level_max;
                    }
                }
            }
            level_ds[i] = (uint8_t)L;
        }
    }
    return fm_cancelled(cancel) ? APRNET_ERR_CANCELLED : APRNET_OK;
}

/* pixel count of cell c along an axis of n pixels, cell size `step` */
static inline int64_t extent(int64_t c, int64_t step, int64_t n) {
    int64_t e = n - c * step;
    return e < step ? e : step;
}

/* Level level_max - 1 of the mean pyramid: means of the 2x2(x2) pixel blocks. */
static int pyramid_from_pixels(const void *image, int dtype, fm_dims dp, fm_dims d, float *out) {
    int st = APRNET_OK;
#pragma omp parallel if (fm_size(dp) >= FM_PAR_MIN)
    {
        float *acc = malloc(sizeof(float) * (size_t)dp.nx);
        if (!acc) {
#pragma omp atomic write
            st = APRNET_ERR_NOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < d.nz * d.ny; ++r) {
            if (!acc) continue;
            const int64_t zd = r / d.ny, yd = r % d.ny;
            int nr = 0;
            for (int64_t z = 2 * zd; z < 2 * zd + 2 && z < dp.nz; ++z)
                for (int64_t y = 2 * yd; y < 2 * yd + 2 && y < dp.ny; ++y, ++nr) {
                    const int64_t off = (z * dp.ny + y) * dp.nx;
                    if (nr) aprnet_fm_add_row(image, dtype, off, dp.nx, acc);
                    else aprnet_fm_load_row(image, dtype, off, dp.nx, acc);
                }
            float *restrict o = out + r * d.nx;
            const float inv_full = 1.0f / (float)(2 * nr);
            for (int64_t k = 0; k < dp.nx / 2; ++k) o[k] = (acc[2 * k] + acc[2 * k + 1]) * inv_full;
            if (dp.nx & 1) o[d.nx - 1] = acc[dp.nx - 1] / (float)nr;
        }
        free(acc);
    }
    return st;
}

/* Level l of the mean pyramid from level l + 1 (dims dc): weighted mean of
 * the children, weights = their pixel counts (step = their cell size). */
static int pyramid_from_children(const float *c, fm_dims dc, fm_dims d, const int64_t shape[3],
                                 int64_t step, float *out) {
    /* pixel counts of the child cells along each axis */
    double *w = malloc(sizeof(double) * (size_t)(dc.nz + dc.ny + dc.nx));
    if (!w) return APRNET_ERR_NOMEM;
    double *wz = w, *wy = w + dc.nz, *wx = w + dc.nz + dc.ny;
    for (int64_t i = 0; i < dc.nz; ++i) wz[i] = (double)extent(i, step, shape[0]);
    for (int64_t i = 0; i < dc.ny; ++i) wy[i] = (double)extent(i, step, shape[1]);
    for (int64_t i = 0; i < dc.nx; ++i) wx[i] = (double)extent(i, step, shape[2]);
#pragma omp parallel for schedule(static) if (fm_size(dc) >= FM_PAR_MIN)
    for (int64_t r = 0; r < d.nz * d.ny; ++r) {
        const int64_t zd = r / d.ny, yd = r % d.ny;
        const int64_t z1 = 2 * zd + 2 < dc.nz ? 2 * zd + 2 : dc.nz;
        const int64_t y1 = 2 * yd + 2 < dc.ny ? 2 * yd + 2 : dc.ny;
        float *o = out + r * d.nx;
        for (int64_t k = 0; k < d.nx; ++k) {
            const int64_t x1 = 2 * k + 2 < dc.nx ? 2 * k + 2 : dc.nx;
            double acc = 0.0, wsum = 0.0;
            for (int64_t z = 2 * zd; z < z1; ++z) {
                for (int64_t y = 2 * yd; y < y1; ++y) {
                    const double wzy = wz[z] * wy[y];
                    const float *cr = c + (z * dc.ny + y) * dc.nx;
                    for (int64_t x = 2 * k; x < x1; ++x) {
                        const double wt = wzy * wx[x];
                        acc += wt * cr[x];
                        wsum += wt;
                    }
                }
            }
            o[k] = (float)(acc / wsum);
        }
    }
    free(w);
    return APRNET_OK;
}

int aprnet_formation_sample(const void *image, int dtype, const int64_t shape[3], int level_max,
                            int64_t n_particles, const uint8_t *levels, const int32_t *coords,
                            int ndim, float *values, int64_t value_stride, const int32_t *cancel) {
    if (!image || !fm_check_shape(shape) || !fm_check_dtype(dtype) || (ndim != 2 && ndim != 3) ||
        (ndim == 2 && shape[0] != 1) || level_max < 0 || level_max > 60 || n_particles < 0 ||
        value_stride < 1)
        return APRNET_ERR_ARG;
    if (n_particles == 0) return APRNET_OK;
    if (!levels || !coords || !values) return APRNET_ERR_ARG;
    /* the coarsest level present (and a first range check of the levels) */
    int lmin = level_max, bad = 0;
#pragma omp parallel for schedule(static) if (n_particles >= FM_PAR_MIN) reduction(min : lmin) reduction(| : bad)
    for (int64_t p = 0; p < n_particles; ++p) {
        const int l = levels[p];
        bad |= l > level_max;
        lmin = l < lmin ? l : lmin;
    }
    if (bad) return APRNET_ERR_BOUNDS;
    /* grid of every level: dl[l] (numpy order) */
    fm_dims dl[64];
    for (int l = lmin; l <= level_max; ++l) {
        const int sh = level_max - l;
        dl[l].nz = ((shape[0] - 1) >> sh) + 1;
        dl[l].ny = ((shape[1] - 1) >> sh) + 1;
        dl[l].nx = ((shape[2] - 1) >> sh) + 1;
    }
    /* mean pyramid for levels lmin .. level_max - 1 */
    float *pyr[64] = {0};
    int st = APRNET_OK;
    for (int l = level_max - 1; l >= lmin && st == APRNET_OK; --l) {
        if (fm_cancelled(cancel)) {
            st = APRNET_ERR_CANCELLED;
            break;
        }
        pyr[l] = aprnet_fm_alloc(sizeof(float) * (size_t)fm_size(dl[l]));
        if (!pyr[l]) {
            st = APRNET_ERR_NOMEM;
            break;
        }
        if (l == level_max - 1)
            st = pyramid_from_pixels(image, dtype, dl[level_max], dl[l], pyr[l]);
        else
            st = pyramid_from_children(pyr[l + 1], dl[l + 1], dl[l], shape,
                                       (int64_t)1 << (level_max - l - 1), pyr[l]);
    }
    if (st == APRNET_OK && fm_cancelled(cancel)) st = APRNET_ERR_CANCELLED;
    if (st == APRNET_OK) {
        /* read the particles' values, checking their coordinates */
        bad = 0;
#pragma omp parallel for schedule(static) if (n_particles >= FM_PAR_MIN) reduction(| : bad)
        for (int64_t p = 0; p < n_particles; ++p) {
            const int l = levels[p];
            const int32_t *q = coords + p * ndim;
            const fm_dims d = dl[l];
            const int64_t z = ndim == 3 ? q[0] : 0, y = q[ndim - 2], x = q[ndim - 1];
            if ((uint64_t)z >= (uint64_t)d.nz || (uint64_t)y >= (uint64_t)d.ny || (uint64_t)x >= (uint64_t)d.nx) {
                bad = 1;
                continue;
            }
            const int64_t i = (z * d.ny + y) * d.nx + x;
            values[p * value_stride] = l == level_max ? fm_load_one(image, dtype, i) : pyr[l][i];
        }
        if (bad) st = APRNET_ERR_BOUNDS;
    }
    for (int l = 0; l < 64; ++l) free(pyr[l]);
    return st;
}

/* Same bin index as numpy.histogram's uniform-bin path (numpy 1.x/2.x):
 * f = (x - first) / (last - first) * nbins, truncated, then corrected
 * against the edges; every step in double, so the counts are identical. */
int aprnet_formation_histogram(const float *values, int64_t n, const double *edges, int64_t nbins,
                               int64_t *counts) {
    if (n < 0 || nbins < 1 || (n > 0 && !values) || !edges || !counts) return APRNET_ERR_ARG;
    const double first = edges[0], last = edges[nbins], denom = last - first;
    if (!(denom > 0.0) || !isfinite(denom)) return APRNET_ERR_ARG;
    for (int64_t b = 0; b < nbins; ++b) counts[b] = 0;
    int status = APRNET_OK;
#pragma omp parallel if (n >= FM_PAR_MIN)
    {
        int64_t *loc = calloc((size_t)nbins, sizeof(int64_t));
        if (!loc) {
#pragma omp atomic write
            status = APRNET_ERR_NOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; ++i) {
            if (!loc) continue;
            const double x = (double)values[i];
            if (!(x >= first && x <= last)) continue;
            int64_t k = (int64_t)(((x - first) / denom) * (double)nbins);
            if (k >= nbins) k = nbins - 1;
            if (k > 0 && x < edges[k]) --k;
            if (k < nbins - 1 && x >= edges[k + 1]) ++k;
            ++loc[k];
        }
        if (loc) {
            /* integer sums: the order of the threads does not matter */
#pragma omp critical(aprnet_formation_histogram)
            for (int64_t b = 0; b < nbins; ++b) counts[b] += loc[b];
        }
        free(loc);
    }
    return status;
}
