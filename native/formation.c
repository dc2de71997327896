/* formation.c -- public entry points of the APR formation pipeline:
 *   1. aprnet_formation_grad_sigma: smoothing spline, gradient magnitude
 *      (max-downsampled 2x) and local intensity scale (half resolution);
 *   2. aprnet_formation_levels: thresholds and the required level per
 *      half-resolution cell;
 *   3. aprnet_pulling_scheme / aprnet_pulling_emit (pulling.c): particle cells;
 *   4. aprnet_formation_sample: particle values = mean of the cell's pixels.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "aprnet.h"
#include "formation_internal.h"

void aprnet_fm_load_row(const void *image, int dtype, int64_t offset, int64_t n, float *out) {
    if (dtype == APRNET_DTYPE_U16) {
        const uint16_t *p = (const uint16_t *)image + offset;
        for (int64_t i = 0; i < n; ++i) out[i] = (float)p[i];
    } else if (dtype == APRNET_DTYPE_U8) {
        const uint8_t *p = (const uint8_t *)image + offset;
        for (int64_t i = 0; i < n; ++i) out[i] = (float)p[i];
    } else {
        memcpy(out, (const float *)image + offset, sizeof(float) * (size_t)n);
    }
}

static float load_one(const void *image, int dtype, int64_t i) {
    if (dtype == APRNET_DTYPE_U16) return (float)((const uint16_t *)image)[i];
    if (dtype == APRNET_DTYPE_U8) return (float)((const uint8_t *)image)[i];
    return ((const float *)image)[i];
}

static int check_shape(const int64_t shape[3]) {
    if (!shape) return 0;
    for (int a = 0; a < 3; ++a)
        if (shape[a] < 1 || shape[a] > ((int64_t)1 << 31)) return 0;
    return 1;
}

static int check_dtype(int dtype) {
    return dtype == APRNET_DTYPE_F32 || dtype == APRNET_DTYPE_U16 || dtype == APRNET_DTYPE_U8;
}

int aprnet_formation_grad_sigma(const void *image, int dtype, const int64_t shape[3],
                                const double spacing[3], double lambda, int psf, float *grad_ds,
                                float *sigma_ds, float *smooth_ds, const int32_t *cancel) {
    if (!image || !check_shape(shape) || !check_dtype(dtype) || !spacing || !grad_ds ||
        !sigma_ds || !smooth_ds || !(lambda >= 0.0) || !isfinite(lambda) || psf < 1)
        return APRNET_ERR_ARG;
    for (int a = 0; a < 3; ++a)
        if (!(spacing[a] > 0.0) || !isfinite(spacing[a])) return APRNET_ERR_ARG;
    const fm_dims d = {shape[0], shape[1], shape[2]};
    const int64_t n = fm_size(d);
    float *work = malloc(sizeof(float) * (size_t)n);
    if (!work) return APRNET_ERR_NOMEM;
    int st = aprnet_fm_smoothing_spline(work, d, lambda, image, dtype, cancel);
    if (st == APRNET_OK && fm_cancelled(cancel)) st = APRNET_ERR_CANCELLED;
    if (st == APRNET_OK) st = aprnet_fm_gradient_maxds(work, d, spacing, grad_ds);
    if (st == APRNET_OK) {
        aprnet_fm_mean_downsample(work, d, smooth_ds);
        if (lambda > 0.0) st = aprnet_fm_inverse_bspline(smooth_ds, fm_half_dims(d));
    }
    free(work);
    if (st == APRNET_OK && fm_cancelled(cancel)) st = APRNET_ERR_CANCELLED;
    if (st == APRNET_OK) st = aprnet_fm_local_intensity_scale(smooth_ds, fm_half_dims(d), psf, sigma_ds);
    return st;
}

int aprnet_formation_levels(const float *grad_ds, const float *sigma_ds, const float *smooth_ds,
                            const int64_t shape_ds[3], double ip_th, double sigma_th,
                            double sigma_th_max, double grad_th, double rel_error, int level_max,
                            double h_min, uint8_t *level_ds) {
    if (!grad_ds || !sigma_ds || !smooth_ds || !level_ds || !check_shape(shape_ds) ||
        !(rel_error > 0.0) || !isfinite(rel_error) || !(h_min > 0.0) || level_max < 0 ||
        level_max > 60 || !isfinite(ip_th) || !isfinite(sigma_th) || !isfinite(sigma_th_max) ||
        !isfinite(grad_th))
        return APRNET_ERR_ARG;
    const int64_t n = shape_ds[0] * shape_ds[1] * shape_ds[2];
    const double factor = ldexp(1.0, level_max) * h_min / rel_error;
    const float fip = (float)ip_th, fst = (float)sigma_th, fstm = (float)sigma_th_max, fgt = (float)grad_th;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
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
                    int e;
                    (void)frexp(v, &e); /* v = m * 2^e, m in [0.5, 1) */
                    L = e - 1;
                    if (L > level_max || !isfinite(v)) L = level_max;
                }
            }
        }
        level_ds[i] = (uint8_t)L;
    }
    return APRNET_OK;
}

/* pixel count of cell c along an axis of n pixels, cell size `step` */
static inline int64_t extent(int64_t c, int64_t step, int64_t n) {
    int64_t e = n - c * step;
    return e < step ? e : step;
}

int aprnet_formation_sample(const void *image, int dtype, const int64_t shape[3], int level_max,
                            int64_t n_particles, const uint8_t *levels, const int32_t *coords,
                            int ndim, float *values, int64_t value_stride, const int32_t *cancel) {
    if (!image || !check_shape(shape) || !check_dtype(dtype) || (ndim != 2 && ndim != 3) ||
        (ndim == 2 && shape[0] != 1) || level_max < 0 || level_max > 60 || n_particles < 0 ||
        value_stride < 1)
        return APRNET_ERR_ARG;
    if (n_particles == 0) return APRNET_OK;
    if (!levels || !coords || !values) return APRNET_ERR_ARG;
    /* validate particles and find the coarsest level */
    int lmin = level_max;
    for (int64_t p = 0; p < n_particles; ++p) {
        const int l = levels[p];
        if (l > level_max) return APRNET_ERR_BOUNDS;
        if (l < lmin) lmin = l;
        const int s = level_max - l;
        const int32_t *q = coords + p * ndim;
        for (int a = 0; a < ndim; ++a) {
            const int64_t na = ((shape[3 - ndim + a] - 1) >> s) + 1;
            if (q[a] < 0 || q[a] >= na) return APRNET_ERR_BOUNDS;
        }
    }
    /* mean pyramid for levels lmin .. level_max - 1 */
    float *pyr[64] = {0};
    fm_dims dl[64];
    int st = APRNET_OK;
    for (int l = level_max - 1; l >= lmin && st == APRNET_OK; --l) {
        const int s = level_max - l;
        dl[l].nz = ((shape[0] - 1) >> s) + 1;
        dl[l].ny = ((shape[1] - 1) >> s) + 1;
        dl[l].nx = ((shape[2] - 1) >> s) + 1;
        pyr[l] = malloc(sizeof(float) * (size_t)fm_size(dl[l]));
        if (!pyr[l]) {
            st = APRNET_ERR_NOMEM;
            break;
        }
        if (fm_cancelled(cancel)) {
            st = APRNET_ERR_CANCELLED;
            break;
        }
        const fm_dims d = dl[l];
        if (l == level_max - 1) {
            /* from pixels */
            const fm_dims dp = {shape[0], shape[1], shape[2]};
#pragma omp parallel
            {
                float *rows = malloc(sizeof(float) * (size_t)(4 * dp.nx));
                if (!rows) {
#pragma omp atomic write
                    st = APRNET_ERR_NOMEM;
                }
#pragma omp for schedule(static)
                for (int64_t r = 0; r < d.nz * d.ny; ++r) {
                    if (!rows) continue;
                    const int64_t zd = r / d.ny, yd = r % d.ny;
                    int nr = 0;
                    for (int64_t z = 2 * zd; z < 2 * zd + 2 && z < dp.nz; ++z)
                        for (int64_t y = 2 * yd; y < 2 * yd + 2 && y < dp.ny; ++y)
                            aprnet_fm_load_row(image, dtype, (z * dp.ny + y) * dp.nx, dp.nx, rows + (nr++) * dp.nx);
                    float *o = pyr[l] + r * d.nx;
                    for (int q = 1; q < nr; ++q) {
                        const float *src = rows + q * dp.nx;
                        for (int64_t x = 0; x < dp.nx; ++x) rows[x] += src[x];
                    }
                    const float inv_full = 1.0f / (float)(2 * nr);
                    for (int64_t k = 0; k < dp.nx / 2; ++k) o[k] = (rows[2 * k] + rows[2 * k + 1]) * inv_full;
                    if (dp.nx & 1) o[d.nx - 1] = rows[dp.nx - 1] / (float)nr;
                }
                free(rows);
            }
        } else {
            /* weighted mean of the children (weights = their pixel counts) */
            const fm_dims dc = dl[l + 1];
            const float *c = pyr[l + 1];
            const int64_t step = (int64_t)1 << (level_max - l - 1);
#pragma omp parallel for schedule(static)
            for (int64_t r = 0; r < d.nz * d.ny; ++r) {
                const int64_t zd = r / d.ny, yd = r % d.ny;
                float *o = pyr[l] + r * d.nx;
                for (int64_t k = 0; k < d.nx; ++k) {
                    double acc = 0.0, wsum = 0.0;
                    for (int64_t z = 2 * zd; z < 2 * zd + 2 && z < dc.nz; ++z) {
                        const double wz = (double)extent(z, step, shape[0]);
                        for (int64_t y = 2 * yd; y < 2 * yd + 2 && y < dc.ny; ++y) {
                            const double wy = wz * (double)extent(y, step, shape[1]);
                            for (int64_t x = 2 * k; x < 2 * k + 2 && x < dc.nx; ++x) {
                                const double w = wy * (double)extent(x, step, shape[2]);
                                acc += w * c[(z * dc.ny + y) * dc.nx + x];
                                wsum += w;
                            }
                        }
                    }
                    o[k] = (float)(acc / wsum);
                }
            }
        }
    }
    if (st == APRNET_OK && fm_cancelled(cancel)) st = APRNET_ERR_CANCELLED;
    if (st == APRNET_OK) {
#pragma omp parallel for schedule(static)
        for (int64_t p = 0; p < n_particles; ++p) {
            const int l = levels[p];
            const int32_t *q = coords + p * ndim;
            const int64_t z = ndim == 3 ? q[0] : 0, y = q[ndim - 2], x = q[ndim - 1];
            float v;
            if (l == level_max) {
                v = load_one(image, dtype, (z * shape[1] + y) * shape[2] + x);
            } else {
                const fm_dims d = dl[l];
                v = pyr[l][(z * d.ny + y) * d.nx + x];
            }
            values[p * value_stride] = v;
        }
    }
    for (int l = 0; l < 64; ++l) free(pyr[l]);
    return st;
}
