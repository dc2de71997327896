/* fm_common.h -- the internal header of the APR formation part (native/formation/):
 * shared types and inline helpers, the buffers and pixel loading of
 * fm_common.c, and the functions each source offers the others
 * (formation.c -> bspline.c, gradient.c, sigma.c -> fm_common.c). Not part
 * of the public C API (aprnet.h) and not seen by cffi. */
#ifndef APRNET_FM_COMMON_H
#define APRNET_FM_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "aprnet.h"

/* Grid dimensions in numpy order: nz planes of ny rows of nx (contiguous) values. */
typedef struct {
    int64_t nz, ny, nx;
} fm_dims;

static inline int64_t fm_size(fm_dims d) { return d.nz * d.ny * d.nx; }

/* A shape of 1 .. 2^31 per axis whose element count, in bytes of a float,
 * fits in size_t and int64_t. */
static inline int fm_check_shape(const int64_t shape[3]) {
    if (!shape) return 0;
    for (int a = 0; a < 3; ++a)
        if (shape[a] < 1 || shape[a] > ((int64_t)1 << 31)) return 0;
    const uint64_t lim = (uint64_t)(SIZE_MAX < INT64_MAX ? SIZE_MAX : INT64_MAX) / 8;
    return (uint64_t)shape[1] * (uint64_t)shape[2] <= lim / (uint64_t)shape[0];
}

static inline int fm_check_dtype(int dtype) {
    return dtype == APRNET_DTYPE_F32 || dtype == APRNET_DTYPE_U16 || dtype == APRNET_DTYPE_U8;
}

/* Loops over fewer elements than this run on the calling thread: a parallel
 * region costs a barrier, which is expensive when the cores are busy, and the
 * results are the same either way (the work is partitioned per element). */
#define FM_PAR_MIN ((int64_t)1 << 15)

/* ceil(n / 2) */
static inline int64_t fm_half(int64_t n) { return (n + 1) / 2; }

static inline fm_dims fm_half_dims(fm_dims d) {
    fm_dims h = {fm_half(d.nz), fm_half(d.ny), fm_half(d.nx)};
    return h;
}

/* Reflection about the edge sample (f[-1] = f[1], f[n] = f[n-2]), repeated
 * as often as needed for short axes. */
static inline int64_t fm_mirror(int64_t i, int64_t n) {
    if (n <= 1) return 0;
    int64_t p = 2 * (n - 1);
    i %= p;
    if (i < 0) i += p;
    return i < n ? i : p - i;
}

/* Element i of a uint8/uint16/float32 image (dtype code) as a float; exact. */
static inline float fm_load_one(const void *image, int dtype, int64_t i) {
    if (dtype == APRNET_DTYPE_U16) return (float)((const uint16_t *)image)[i];
    if (dtype == APRNET_DTYPE_U8) return (float)((const uint8_t *)image)[i];
    return ((const float *)image)[i];
}

static inline int fm_cancelled(const int32_t *cancel) {
    return cancel != NULL && *(const volatile int32_t *)cancel != 0;
}

/* bspline.c */
/* Smooth img in place; if src is not NULL, img is first filled from the typed
 * image src (dtype code), fused with the first pass. With skip_z the pass
 * along z is left out (to be run by aprnet_fm_line_filter_apply). */
int aprnet_fm_smoothing_spline(float *img, fm_dims d, double lambda, const void *src, int dtype,
                               int skip_z, const int32_t *cancel);
/* The z pass alone on a block of d.nz >= 2 planes, continuing the causal
 * recursion from state_in (2 planes, or NULL: mirror boundary) and keeping
 * the causal values of planes keep - 2, keep - 1 in state_out (or NULL). */
int aprnet_fm_spline_z_block(float *img, fm_dims d, double lambda, const float *state_in, int64_t keep,
                             float *state_out, const int32_t *cancel);
/* The smoothing-spline filter along lines of length n >= 2 (the same
 * arithmetic as the passes of aprnet_fm_smoothing_spline). apply filters the
 * n lines of `width` values stored one after the other at base (line i at
 * base + i * width); tmp holds 5 * width floats. */
typedef struct fm_line_filter fm_line_filter;
int aprnet_fm_line_filter_new(double lambda, int64_t n, fm_line_filter **out, const int32_t *cancel);
void aprnet_fm_line_filter_free(fm_line_filter *f);
void aprnet_fm_line_filter_apply(const fm_line_filter *f, float *base, int64_t width, float *tmp);
int aprnet_fm_inverse_bspline(float *img, fm_dims d, const int32_t *cancel);

/* gradient.c: gradient magnitude max-downsampled 2x and the 2x mean of coef */
int aprnet_fm_grad_mean_ds(const float *coef, fm_dims d, const double h[3], float *grad_ds,
                           float *smooth_ds, const int32_t *cancel);
/* The same from the image smoothed along x and y only (xy), running the z
 * pass (zf, length d.nz >= 2) itself; per-thread buffers of
 * aprnet_fm_zfused_bytes(d) bytes. */
int aprnet_fm_grad_mean_ds_zfilter(const float *xy, fm_dims d, const double h[3],
                                   const fm_line_filter *zf, float *grad_ds, float *smooth_ds,
                                   const int32_t *cancel);
int64_t aprnet_fm_zfused_bytes(fm_dims d);

/* sigma.c */
int aprnet_fm_local_intensity_scale(const float *smooth_ds, fm_dims dh, int psf, float *sigma,
                                    const int32_t *cancel);

/* fm_common.c: a buffer for `bytes` bytes (release with free); large ones are
 * aligned to 2 MiB and marked for transparent huge pages, which makes their
 * first touch much cheaper. NULL when out of memory. */
void *aprnet_fm_alloc(size_t bytes);

/* pixel loading (fm_common.c): convert `n` values of the given dtype starting at
 * element `offset` into floats (out[i] = value), or add them (out[i] += value). */
void aprnet_fm_load_row(const void *image, int dtype, int64_t offset, int64_t n, float *out);
void aprnet_fm_add_row(const void *image, int dtype, int64_t offset, int64_t n, float *out);

#endif
