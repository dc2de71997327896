/*
 * aprnet.h -- the whole C API of the napari-aprnet native library.
 *
 * Conventions
 *   - Arrays are C-contiguous, numpy axis order: (y, x) in 2D, (z, y, x) in 3D;
 *     x is the fastest axis. `shape` arguments are always int64_t[3] holding
 *     (nz, ny, nx) with nz = 1 for 2D images.
 *   - Every function returns an int status: APRNET_OK (0) or a negative error
 *     code below (APRNET_ERR_DATA: well-formed arrays that describe no APR).
 *     Callers (napari_aprnet/_native/) check bounds and shapes before
 *     calling, the C code checks again cheaply and never aborts.
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
#define APRNET_ERR_DATA -6

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

/* Stage 1 in pieces, for a volume converted block by block along z
 * (formation/blocks.c); the same arithmetic as aprnet_formation_grad_sigma.
 * spline_xy: the smoothing spline along y and x of each plane -> out (float,
 * shape). spline_z: its z pass in place on img (shape[0] >= 2 planes, lambda
 * > 0), the causal recursion continued from state_in (the unnormalised causal
 * values of the 2 planes before img, the earlier first; NULL: mirror
 * boundary) and the anti-causal one started from a mirror boundary after the
 * last plane; state_out (2 planes, or NULL) receives the causal values of
 * planes keep - 2 and keep - 1 (2 <= keep <= shape[0]). grad_ds: gradient
 * magnitude max-downsampled 2x and the 2x mean of a smoothed image, as stage
 * 1. scale: the inverse B-spline (lambda > 0) in place on smooth_ds and the
 * local intensity scale -> sigma_ds (both shape_ds). */
int aprnet_formation_spline_xy(const void *image, int dtype, const int64_t shape[3], double lambda,
                               float *out, const int32_t *cancel);
int aprnet_formation_spline_z(float *img, const int64_t shape[3], double lambda,
                              const float *state_in, int64_t keep, float *state_out,
                              const int32_t *cancel);
int aprnet_formation_grad_ds(const float *smoothed, const int64_t shape[3], const double spacing[3],
                             float *grad_ds, float *smooth_ds, const int32_t *cancel);
int aprnet_formation_scale(float *smooth_ds, const int64_t shape_ds[3], double lambda, int psf,
                           float *sigma_ds, const int32_t *cancel);

/* Stage 2. Thresholds and required level per half-resolution cell:
 * L = floor(log2(grad / sigma * 2^level_max * h_min / rel_error)), 0 below 2. */
int aprnet_formation_levels(const float *grad_ds, const float *sigma_ds, const float *smooth_ds,
                            const int64_t shape_ds[3], double ip_th, double sigma_th,
                            double sigma_th_max, double grad_th, double rel_error,
                            int level_max, double h_min, uint8_t *level_ds,
                            const int32_t *cancel);

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

/* Counts of the n values in the nbins uniform bins with edges edges[0..nbins]
 * (as numpy.linspace makes them), bin for bin as numpy.histogram counts them
 * with range (edges[0], edges[nbins]); values outside are not counted. */
int aprnet_formation_histogram(const float *values, int64_t n, const double *edges, int64_t nbins,
                               int64_t *counts);

/* ===== reconstruction (reconstruct/: constant.c, smooth.c) ===== */

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

/* How a cell holding finer particles (an interior tree node) gets its value
 * in aprnet_reconstruct_constant below the pixel level. */
#define APRNET_REDUCE_MEAN 0
#define APRNET_REDUCE_MAX 1

/* Piecewise constant image on the grid of `level` (level_max: pixels; level
 * l has ceil(n / 2^(level_max - l)) cells per axis) over region (z0, z1, y0,
 * y1, x0, x1) (half-open, in cells of that level), sampled every step (sz,
 * sy, sx) cells (NULL: every cell): out[i, j, k, c] is cell (z0 + i sz,
 * y0 + j sy, x0 + k sx) for i < ceil((z1 - z0) / sz) etc. A cell covered by
 * a particle of this or a coarser level takes the particle's value; a cell
 * holding finer particles takes the APR tree's value: APRNET_REDUCE_MEAN the
 * mean of its children inside the image, each child counting once,
 * recursively (LibAPR's tree mean); APRNET_REDUCE_MAX the largest particle
 * value inside it. values NULL (nch 1) stands for each particle's level: the
 * level map. out holds the counts' product times nch floats. */
int aprnet_reconstruct_constant(const aprnet_cell_table *parts, const float *values, int64_t nch, int level,
                                int reduce, const int64_t *region, const int64_t *step, float *out,
                                const int32_t *cancel);

/* Checks n cells (levels (n,), coords (n, ndim)) of the grid shape (nz, ny,
 * nx) at level_max (reconstruct/cells.c): levels <= level_max, coordinates
 * inside their level grid, sorted by level then row-major without repeats.
 * Fills level_offsets (level_max + 2 entries), *volume, the pixels the cells
 * cover (clipped to the image), and, unless row_start is NULL, the row table
 * of aprnet_cell_table: row_start (zeroed by the caller, sum over levels of
 * nz_l * ny_l + 1 entries) laid out by row_base. APRNET_ERR_DATA: *bad is the
 * first offending cell and *problem 1 (level above level_max), 2 (levels not
 * sorted), 3 (outside its level grid) or 4 (not row-major, or repeated). */
int aprnet_cells_check(const int64_t shape[3], int ndim, int level_max, int64_t n, const uint8_t *levels,
                       const int32_t *coords, int64_t *level_offsets, int64_t *volume, const int64_t *row_base,
                       int64_t *row_start, int64_t *bad, int32_t *problem);

/* APRNET_OK when no cell of t lies inside a coarser cell of t; else
 * APRNET_ERR_DATA with *first_nested the smallest index of such a cell
 * (reconstruct/cells.c). With sorted cells inside their grids and a
 * total cell volume equal to the image's, OK means the cells tile the image
 * exactly once. */
int aprnet_cells_nested(const aprnet_cell_table *t, int64_t *first_nested, const int32_t *cancel);

/* Smooth image of the same region: per pixel, the tent-weighted mean of the
 * particles whose (clipped) cell centres are closer than the pixel's own cell
 * side (see smooth.c). tree is the interior-tree table of the same APR. */
int aprnet_reconstruct_smooth(const aprnet_cell_table *parts, const aprnet_cell_table *tree,
                              const float *values, int64_t nch, const int64_t *region, float *out,
                              const int32_t *cancel);

/* ===== labels (labels/labels.c) ===== */
/* Label image dtype codes (signed images with no negative label are passed
 * as the unsigned type of the same width). */
#define APRNET_LABEL_U8 0
#define APRNET_LABEL_U16 1
#define APRNET_LABEL_U32 2
#define APRNET_LABEL_U64 3

/* out[p] = the label held by most pixels of particle p's cell in the label
 * image of the table's shape (ties: the larger label). APRNET_ERR_ARG for a
 * label above INT64_MAX. Independent of the number of threads. */
int aprnet_labels_majority(const aprnet_cell_table *parts, const void *image, int dtype, int64_t *out,
                           const int32_t *cancel);

/* Label image of region (z0, z1, y0, y1, x0, x1) (half-open, pixels): every
 * pixel gets the label_bytes (1, 2, 4 or 8) bytes of labels[p] of the
 * particle p covering it, copied exactly. */
int aprnet_labels_paint(const aprnet_cell_table *parts, const void *labels, int64_t label_bytes,
                        const int64_t *region, void *out, const int32_t *cancel);

/* ===== network structure work (nn/plan.c, nn/kernels.c) ===== */
/* dst[index[i], :] += src[i, :]; rows of n_cols values; deterministic for any thread count. */
int aprnet_nn_scatter_add_f32(const float *src, int64_t n_rows, int64_t n_cols, const int32_t *index,
                              float *dst, int64_t n_dst);
int aprnet_nn_scatter_add_f64(const double *src, int64_t n_rows, int64_t n_cols, const int32_t *index,
                              double *dst, int64_t n_dst);

/* Tree filling over a batch value table values (n_values, n_cols), nn/kernels.c:
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

/* Max pooling (nn/kernels.c), x (n, n_cols) -> out (n_out, n_cols):
 * out[pass_dst[i]] = x[pass_src[i]]; out[pool_dst[i], c] = max over j of
 * x[children[i, j], c] (first maximum in child order, NaN wins as in
 * torch.max); argsrc (n_pool, n_cols, optional) gets the input row of each
 * maximum. Backward: grad_x[pass_src[i]] = grad[pass_dst[i]] and
 * grad_x[argsrc[i, c], c] = grad[pool_dst[i], c] into a zeroed grad_x.
 * Indices are checked (APRNET_ERR_BOUNDS); deterministic for any thread count. */
int aprnet_nn_pool_forward_f32(const float *x, int64_t n, int64_t n_cols, const int64_t *pass_src,
                               const int64_t *pass_dst, int64_t n_pass, const int64_t *pool_dst,
                               const int64_t *children, int64_t n_pool, int n_children, float *out,
                               int64_t n_out, int32_t *argsrc);
int aprnet_nn_pool_forward_f64(const double *x, int64_t n, int64_t n_cols, const int64_t *pass_src,
                               const int64_t *pass_dst, int64_t n_pass, const int64_t *pool_dst,
                               const int64_t *children, int64_t n_pool, int n_children, double *out,
                               int64_t n_out, int32_t *argsrc);
int aprnet_nn_pool_backward_f32(const float *grad, int64_t n_out, int64_t n_cols, const int64_t *pass_src,
                                const int64_t *pass_dst, int64_t n_pass, const int64_t *pool_dst,
                                const int32_t *argsrc, int64_t n_pool, float *grad_x, int64_t n);
int aprnet_nn_pool_backward_f64(const double *grad, int64_t n_out, int64_t n_cols, const int64_t *pass_src,
                                const int64_t *pass_dst, int64_t n_pass, const int64_t *pool_dst,
                                const int32_t *argsrc, int64_t n_pool, double *grad_x, int64_t n);

/* Index plans of the APR layers for a whole batch (nn/plan.c). Build once per
 * batch of structures, query, free. Inputs: shapes (B, 3) as (nz, ny, nx) with
 * nz = 1 in 2D, level_max (B,), particle_starts (B + 1,) (particles of
 * structure b are rows particle_starts[b]..[b + 1] of levels and coords),
 * levels (n_total,) and coords (n_total, ndim) concatenated, each structure
 * sorted by level then row-major; max_level = max(level_max). Outputs:
 * level_offsets (B, max_level + 2) local level offsets and tree_counts
 * (B, max_level + 1) interior tree nodes per level. APRNET_ERR_ARG when a
 * structure is not sorted or its cells do not tile the image exactly once
 * (or when the batch needs indices of 2^31 or more), APRNET_ERR_BOUNDS for a
 * coordinate outside its level's grid. Batch value indices are
 * [all particles | all tree nodes (structure by structure, each in
 * APRStructure.tree order) | zero row]. */
typedef struct aprnet_nn_plan aprnet_nn_plan;
int aprnet_nn_plan_build(int ndim, int64_t n_structures, const int64_t *shapes, const int32_t *level_max,
                         const int64_t *particle_starts, const uint8_t *levels, const int32_t *coords,
                         int max_level, int64_t *level_offsets, int64_t *tree_counts, aprnet_nn_plan **out);
/* Convolution rulebook (n_total, k^ndim) in batch value indices, rows ordered by
 * level kernel g (g = min(level_max - level, n_level_kernels - 1)), then
 * structure, then particle; rows (n_total,) the batch particle of each row;
 * group_counts (n_level_kernels,); rulebook may be NULL (rows only). With one
 * structure and one level kernel the rows are in particle order and the
 * indices are the structure's own. */
int aprnet_nn_plan_conv(const aprnet_nn_plan *plan, int kernel_size, int n_level_kernels, int32_t *rulebook,
                        int64_t *rows, int64_t *group_counts);
/* Tree nodes ordered by level (finest first), then structure, then node:
 * rows (n_tree_total,) their batch value index, children (n_tree_total, 2^ndim)
 * batch value indices of the child cells (the zero row outside the image). */
int aprnet_nn_plan_tree(const aprnet_nn_plan *plan, int64_t *rows, int64_t *children);
/* Max pooling (every level_max >= 1): pooled structures concatenated in
 * out_coords (n_out, ndim) / out_levels (n_out,), structure b holding its
 * particles below level_max plus the tree nodes of level level_max - 1;
 * pass_src/pass_dst (n_pass,) kept particles (batch input -> batch output
 * index); pool_dst (n_pool,) and pool_children (n_pool, 2^ndim) pooled cells
 * and their input particles (a child outside the image repeats child 0). */
int aprnet_nn_plan_pool(const aprnet_nn_plan *plan, int32_t *out_coords, uint8_t *out_levels, int64_t *pass_src,
                        int64_t *pass_dst, int64_t *pool_dst, int64_t *pool_children);
/* Stencil values of particles rows (n_rows,) (batch indices), read from the
 * level maps without a stored rulebook: out (n_rows, k^ndim, cin) holds
 * values[rulebook entry] for the batch value table values (n_values, cin),
 * n_values = n_total + n_tree_total + 1. */
int aprnet_nn_plan_gather_f32(const aprnet_nn_plan *plan, int kernel_size, const int64_t *rows, int64_t n_rows,
                              const float *values, int64_t n_values, int64_t cin, float *out);
int aprnet_nn_plan_gather_f64(const aprnet_nn_plan *plan, int kernel_size, const int64_t *rows, int64_t n_rows,
                              const double *values, int64_t n_values, int64_t cin, double *out);
void aprnet_nn_plan_free(aprnet_nn_plan *plan);
#endif /* APRNET_H */
