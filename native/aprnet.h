/*
 * aprnet.h -- the whole C API of the napari-aprnet native library.
 *
 * Conventions
 *   - Arrays are C-contiguous, numpy axis order: (y, x) in 2D, (z, y, x) in 3D;
 *     x is the fastest axis. `shape` arguments are always int64_t[3] holding
 *     (nz, ny, nx) with nz = 1 for 2D images.
 *   - Every function returns an int status: APRNET_OK (0) or a negative error
 *     code below. Callers (napari_aprnet/_native.py) check bounds and shapes
 *     before calling, the C code checks again cheaply and never aborts.
 *   - Particle order: by level (coarse to fine), then row-major (z, y, x) at
 *     the particle's own level. Level l has ceil(n / 2^(level_max - l)) cells
 *     per axis. Interior tree nodes use the same order.
 *   - No function calls back into Python. Long functions poll `*cancel`
 *     (may be NULL) and return APRNET_ERR_CANCELLED when it becomes non-zero.
 *
 * Sections: each part of the library owns one section; add functions only
 * inside your own section.
 */
#ifndef APRNET_H
#define APRNET_H

#include <stdint.h>

#define APRNET_OK 0
#define APRNET_ERR_ARG -1
#define APRNET_ERR_NOMEM -2
#define APRNET_ERR_CANCELLED -3
#define APRNET_ERR_INTERNAL -4
#define APRNET_ERR_BOUNDS -5

/* ===== common (common.c) ===== */
const char *aprnet_version(void);
int aprnet_max_threads(void);
void aprnet_set_num_threads(int n);

/* ===== formation (formation*.c, pulling*.c) ===== */
/* Image dtype codes accepted by the formation functions. */
#define APRNET_DTYPE_F32 0
#define APRNET_DTYPE_U16 1
#define APRNET_DTYPE_U8 2

/* Stage 1. From an image of `shape` (nz, ny, nx): smoothing spline (lambda,
 * 0 = none), gradient magnitude with pixel spacing (dz, dy, dx), max-
 * downsampled 2x -> grad_ds; smoothed image mean-downsampled 2x -> smooth_ds;
 * local intensity scale -> sigma_ds. The three outputs have shape
 * ceil(shape / 2). psf (>= 1) selects the box-mean windows. */
int aprnet_formation_grad_sigma(const void *image, int dtype, const int64_t shape[3],
                                const double spacing[3], double lambda, int psf,
                                float *grad_ds, float *sigma_ds, float *smooth_ds,
                                const int32_t *cancel);

/* Stage 2. Thresholds and required level per half-resolution cell:
 * L = floor(log2(grad / sigma * 2^level_max * h_min / rel_error)), 0 below 2. */
int aprnet_formation_levels(const float *grad_ds, const float *sigma_ds, const float *smooth_ds,
                            const int64_t shape_ds[3], double ip_th, double sigma_th,
                            double sigma_th_max, double grad_th, double rel_error,
                            int level_max, double h_min, uint8_t *level_ds);

/* Stage 3. Bytes of the particle-cell tree buffer for aprnet_pulling_scheme. */
int64_t aprnet_pulling_tree_bytes(const int64_t shape[3], int level_max, int level_min);

/* Pulling scheme on the required levels (shape of level level_max - 1).
 * Fills `tree` and the particle count of every level (level_max + 1 values). */
int aprnet_pulling_scheme(const uint8_t *level_ds, const int64_t shape[3], int level_max,
                          int level_min, int neighborhood_optimization, uint8_t *tree,
                          int64_t tree_bytes, int64_t *level_counts, const int32_t *cancel);

/* Writes the n_particles particles (levels, coords (n, ndim)) in contract order. */
int aprnet_pulling_emit(const uint8_t *tree, int64_t tree_bytes, const int64_t shape[3],
                        int level_max, int level_min, int ndim, int64_t n_particles,
                        uint8_t *levels, int32_t *coords);

/* Stage 4. values[p * value_stride] = mean of the pixels in particle p's cell. */
int aprnet_formation_sample(const void *image, int dtype, const int64_t shape[3], int level_max,
                            int64_t n_particles, const uint8_t *levels, const int32_t *coords,
                            int ndim, float *values, int64_t value_stride,
                            const int32_t *cancel);

/* ===== reconstruction and sampling (reconstruct*.c) ===== */

/* A set of cells (particles or interior tree nodes) with a row table for
 * O(1) access to the cells of one (level, z, y) row. Built and validated by
 * napari_aprnet/_native.py (cell_table); the C code trusts it.
 *   coords        (n, ndim) int32, sorted by level then row-major position
 *   level_offsets level_max + 2 entries: cells of level l are
 *                 [level_offsets[l], level_offsets[l + 1])
 *   row_base      level_max + 1 entries: level l's row starts begin at
 *                 row_start[row_base[l]]
 *   row_start     for each level, nz_l * ny_l + 1 absolute cell indices: the
 *                 cells of row (zl, yl) are [row_start[row_base[l] + zl * ny_l + yl], next)
 */
typedef struct aprnet_cell_table {
    int64_t shape[3];
    int32_t ndim;
    int32_t level_max;
    int64_t n;
    const int32_t *coords;
    const int64_t *level_offsets;
    const int64_t *row_base;
    const int64_t *row_start;
} aprnet_cell_table;

/* Piecewise constant image of region (z0, z1, y0, y1, x0, x1) (half-open,
 * in pixels at level_max): out[(z - z0), (y - y0), (x - x0), c] = values[p, c]
 * for the particle p covering the pixel. out has (z1-z0)*(y1-y0)*(x1-x0)*nch floats. */
int aprnet_reconstruct_constant(const aprnet_cell_table *parts, const float *values, int64_t nch,
                                const int64_t *region, float *out, const int32_t *cancel);

/* Smooth image of the same region: per pixel, the tent-weighted mean of the
 * particles whose (clipped) cell centres are closer than the pixel's own cell
 * side (see reconstruct.c). tree is the interior-tree table of the same APR. */
int aprnet_reconstruct_smooth(const aprnet_cell_table *parts, const aprnet_cell_table *tree,
                              const float *values, int64_t nch, const int64_t *region, float *out,
                              const int32_t *cancel);

/* ===== network structure work (nn_*.c) ===== */
/* Structure maps of one APR (nn_structure.c). shape = (nz, ny, nx), nz = 1 in
 * 2D; coords (n_particles, ndim) and tree_coords (n_tree, ndim) sorted by level
 * then row-major, with level/tree offsets of length level_max + 2.
 * rulebook (optional, n_particles * k^ndim): for each particle and stencil
 * offset (row-major dz, dy, dx in -k/2..k/2) the index of the value feeding it
 * in [particles | tree | zero] (zero = n_particles + n_tree).
 * children (optional, n_tree * 2^ndim): child cells of each tree node as an
 * index into [particles | tree], -1 outside the image.
 * Returns APRNET_ERR_ARG when the particles are not a partition of the image
 * or not sorted, APRNET_ERR_BOUNDS for coordinates outside their level. */
int aprnet_nn_structure_maps(int ndim, const int64_t *shape, int level_max,
                             int64_t n_particles, const int32_t *coords, const int64_t *level_offsets,
                             int64_t n_tree, const int32_t *tree_coords, const int64_t *tree_offsets,
                             int kernel_size, int32_t *rulebook, int32_t *children);
/* dst[index[i], :] += src[i, :]; rows of n_cols values; deterministic for any thread count. */
int aprnet_nn_scatter_add_f32(const float *src, int64_t n_rows, int64_t n_cols, const int32_t *index,
                              float *dst, int64_t n_dst);
int aprnet_nn_scatter_add_f64(const double *src, int64_t n_rows, int64_t n_cols, const int32_t *index,
                              double *dst, int64_t n_dst);

/* Tree filling over a batch value table values (n_values, n_cols), nn_kernels.c:
 * values[rows[i]] = mean of values[children[i, :]] (children equal to
 * zero_index are missing and not counted); rows must be disjoint from all
 * children. tree_spread is its adjoint: grad[child] += grad[rows[i]] / count,
 * children unique over all i. Deterministic for any thread count. */
int aprnet_nn_tree_mean_f32(float *values, int64_t n_values, int64_t n_cols, const int64_t *rows,
                            const int64_t *children, int64_t n_rows, int n_children, int64_t zero_index);
int aprnet_nn_tree_mean_f64(double *values, int64_t n_values, int64_t n_cols, const int64_t *rows,
                            const int64_t *children, int64_t n_rows, int n_children, int64_t zero_index);
int aprnet_nn_tree_spread_f32(float *grad, int64_t n_values, int64_t n_cols, const int64_t *rows,
                              const int64_t *children, int64_t n_rows, int n_children, int64_t zero_index);
int aprnet_nn_tree_spread_f64(double *grad, int64_t n_values, int64_t n_cols, const int64_t *rows,
                              const int64_t *children, int64_t n_rows, int n_children, int64_t zero_index);

/* Fused CPU convolution kernels (nn_conv.c). values (n_values, cin) is the
 * table [particles | tree | zero]; rulebook (n, K) int32 indexes it; weight is
 * (K, cin, cout). forward: out[i] = bias + sum_o values[rb[i,o]] @ weight[o]
 * (bias may be NULL). grad_weight: grad_weight[o] += sum_i values[rb[i,o]]^T
 * grad_out[i]. grad_values: grad_values[rb[i,o]] += weight[o] @ grad_out[i],
 * rows equal to skip_index (the zero row; -1 for none) are skipped. All three
 * give the same result for any number of threads. */
int aprnet_nn_conv_forward_f32(const float *values, int64_t n_values, int64_t cin, const int32_t *rulebook,
                               int64_t n, int64_t K, const float *weight, int64_t cout, const float *bias,
                               float *out);
int aprnet_nn_conv_forward_f64(const double *values, int64_t n_values, int64_t cin, const int32_t *rulebook,
                               int64_t n, int64_t K, const double *weight, int64_t cout, const double *bias,
                               double *out);
int aprnet_nn_conv_grad_weight_f32(const float *values, int64_t n_values, int64_t cin, const int32_t *rulebook,
                                   int64_t n, int64_t K, const float *grad_out, int64_t cout, float *grad_weight);
int aprnet_nn_conv_grad_weight_f64(const double *values, int64_t n_values, int64_t cin, const int32_t *rulebook,
                                   int64_t n, int64_t K, const double *grad_out, int64_t cout,
                                   double *grad_weight);
int aprnet_nn_conv_grad_values_f32(const float *grad_out, int64_t n, int64_t cout, const int32_t *rulebook,
                                   int64_t K, const float *weight, int64_t cin, float *grad_values,
                                   int64_t n_values, int64_t skip_index);
int aprnet_nn_conv_grad_values_f64(const double *grad_out, int64_t n, int64_t cout, const int32_t *rulebook,
                                   int64_t K, const double *weight, int64_t cin, double *grad_values,
                                   int64_t n_values, int64_t skip_index);
#endif /* APRNET_H */
