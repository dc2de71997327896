/* blocks.c -- stage 1 of APR formation in pieces, for the conversion of a
 * volume block by block along z (napari_aprnet/blockwise.py) with the
 * spline's causal z-state carried from one block to the next:
 *   aprnet_formation_spline_xy: the spline along y and x, plane by plane;
 *   aprnet_formation_spline_z:  its z pass on a block, continuing the causal
 *                               recursion of the block before;
 *   aprnet_formation_grad_ds:   gradient magnitude (max-downsampled 2x) and
 *                               2x mean of the smoothed block;
 *   aprnet_formation_scale:     inverse B-spline and local intensity scale of
 *                               half-resolution planes.
 * The same kernels and arithmetic as aprnet_formation_grad_sigma. */
#include <math.h>

#include "aprnet.h"
#include "fm_common.h"

static fm_dims dims_of(const int64_t shape[3]) {
    const fm_dims d = {shape[0], shape[1], shape[2]};
    return d;
}

int aprnet_formation_spline_xy(const void *image, int dtype, const int64_t shape[3], double lambda,
                               float *out, const int32_t *cancel) {
    if (!image || !out || !fm_check_shape(shape) || !fm_check_dtype(dtype) || !(lambda >= 0.0) ||
        !isfinite(lambda))
        return APRNET_ERR_ARG;
    int st = aprnet_fm_smoothing_spline(out, dims_of(shape), lambda, image, dtype, 1, cancel);
    if (st == APRNET_OK && fm_cancelled(cancel)) st = APRNET_ERR_CANCELLED;
    return st;
}

int aprnet_formation_spline_z(float *img, const int64_t shape[3], double lambda, const float *state_in,
                              int64_t keep, float *state_out, const int32_t *cancel) {
    if (!img || !fm_check_shape(shape) || shape[0] < 2 || !(lambda > 0.0) || !isfinite(lambda) ||
        (state_out && (keep < 2 || keep > shape[0])))
        return APRNET_ERR_ARG;
    int st = aprnet_fm_spline_z_block(img, dims_of(shape), lambda, state_in, keep, state_out, cancel);
    if (st == APRNET_OK && fm_cancelled(cancel)) st = APRNET_ERR_CANCELLED;
    return st;
}

int aprnet_formation_grad_ds(const float *smoothed, const int64_t shape[3], const double spacing[3],
                             float *grad_ds, float *smooth_ds, const int32_t *cancel) {
    if (!smoothed || !fm_check_shape(shape) || !spacing || !grad_ds || !smooth_ds) return APRNET_ERR_ARG;
    for (int a = 0; a < 3; ++a)
        if (!(spacing[a] > 0.0) || !isfinite(spacing[a])) return APRNET_ERR_ARG;
    return aprnet_fm_grad_mean_ds(smoothed, dims_of(shape), spacing, grad_ds, smooth_ds, cancel);
}

int aprnet_formation_scale(float *smooth_ds, const int64_t shape_ds[3], double lambda, int psf,
                           float *sigma_ds, const int32_t *cancel) {
    if (!smooth_ds || !sigma_ds || !fm_check_shape(shape_ds) || !(lambda >= 0.0) || !isfinite(lambda) ||
        psf < 1)
        return APRNET_ERR_ARG;
    const fm_dims dh = dims_of(shape_ds);
    int st = lambda > 0.0 ? aprnet_fm_inverse_bspline(smooth_ds, dh, cancel) : APRNET_OK;
    if (st == APRNET_OK && fm_cancelled(cancel)) st = APRNET_ERR_CANCELLED;
    if (st == APRNET_OK) st = aprnet_fm_local_intensity_scale(smooth_ds, dh, psf, sigma_ds, cancel);
    return st;
}
