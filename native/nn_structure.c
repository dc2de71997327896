/* nn_structure.c -- structure work for the APR network layers.
 *
 * Per-level lookup maps are built coarse to fine, keeping two levels at a
 * time. A map cell holds the index of the particle covering it (a particle at
 * this level or an inherited coarser one), n_particles + t for interior tree
 * node t, or -1 while unfilled. From the maps we read
 *   - the convolution rulebook: for each particle and stencil offset the
 *     value that feeds it, as an index into [particles | tree nodes | zero];
 *   - the children of every tree node (index into [particles | tree], -1 for
 *     a child cell outside the image).
 * Every loop writes disjoint outputs, so results do not depend on the
 * number of OpenMP threads.
 */
#include <stdlib.h>
#include <string.h>

#include "aprnet.h"

#define NN_PAR_MIN 4096 /* loop sizes below which work stays serial */
#ifdef _OPENMP
#include <omp.h>
#define NN_THREAD_IDS(nth, tid) do { nth = omp_get_num_threads(); tid = omp_get_thread_num(); } while (0)
#else
#define NN_THREAD_IDS(nth, tid) do { nth = 1; tid = 0; } while (0)
#endif

static void nn_level_grid(const int64_t *shape, int level_max, int level, int64_t *g) {
    int s = level_max - level;
    for (int a = 0; a < 3; a++) g[a] = (shape[a] + ((int64_t)1 << s) - 1) >> s;
}

static void nn_coord3(const int32_t *coords, int ndim, int64_t i, int64_t *c) {
    const int32_t *p = coords + i * ndim;
    if (ndim == 2) {
        c[0] = 0; c[1] = p[0]; c[2] = p[1];
    } else {
        c[0] = p[0]; c[1] = p[1]; c[2] = p[2];
    }
}

/* 0 if the coordinates of [lo, hi) lie in grid g and are strictly increasing row-major. */
static int nn_check_sorted(const int32_t *coords, int ndim, int64_t lo, int64_t hi, const int64_t *g) {
    int64_t prev = -1;
    for (int64_t i = lo; i < hi; i++) {
        int64_t c[3];
        nn_coord3(coords, ndim, i, c);
        for (int a = 0; a < 3; a++)
            if (c[a] < 0 || c[a] >= g[a]) return APRNET_ERR_BOUNDS;
        int64_t key = (c[0] * g[1] + c[1]) * g[2] + c[2];
        if (key <= prev) return APRNET_ERR_ARG;
        prev = key;
    }
    return APRNET_OK;
}

int aprnet_nn_structure_maps(int ndim, const int64_t *shape, int level_max,
                             int64_t n_particles, const int32_t *coords, const int64_t *level_offsets,
                             int64_t n_tree, const int32_t *tree_coords, const int64_t *tree_offsets,
                             int kernel_size, int32_t *rulebook, int32_t *children) {
    if ((ndim != 2 && ndim != 3) || shape == NULL || level_max < 0 || level_max > 40 ||
        n_particles < 0 || n_tree < 0 || level_offsets == NULL || tree_offsets == NULL)
        return APRNET_ERR_ARG;
    if (n_particles + n_tree + 1 > 2147483647LL) return APRNET_ERR_ARG;
    if (rulebook != NULL && (kernel_size < 1 || kernel_size % 2 == 0)) return APRNET_ERR_ARG;
    if (ndim == 2 && shape[0] != 1) return APRNET_ERR_ARG;
    if (level_offsets[0] != 0 || level_offsets[level_max + 1] != n_particles ||
        tree_offsets[0] != 0 || tree_offsets[level_max + 1] != n_tree)
        return APRNET_ERR_ARG;
    if (tree_offsets[level_max + 1] != tree_offsets[level_max]) return APRNET_ERR_ARG;
    for (int l = 0; l <= level_max; l++) {
        int64_t g[3];
        nn_level_grid(shape, level_max, l, g);
        if (level_offsets[l + 1] < level_offsets[l] || tree_offsets[l + 1] < tree_offsets[l])
            return APRNET_ERR_ARG;
        int st = nn_check_sorted(coords, ndim, level_offsets[l], level_offsets[l + 1], g);
        if (st != APRNET_OK) return st;
        st = nn_check_sorted(tree_coords, ndim, tree_offsets[l], tree_offsets[l + 1], g);
        if (st != APRNET_OK) return st;
    }

    const int r = kernel_size / 2;
    const int kz = (ndim == 3) ? kernel_size : 1;
    const int64_t K = (int64_t)kz * kernel_size * kernel_size;
    const int nchild = 1 << ndim;
    const int32_t zero_index = (int32_t)(n_particles + n_tree);
    int32_t *prev = NULL;
    int64_t pg[3] = {0, 0, 0};
    int status = APRNET_OK;

    for (int l = 0; l <= level_max && status == APRNET_OK; l++) {
        int64_t g[3];
        nn_level_grid(shape, level_max, l, g);
        const int64_t ncell = g[0] * g[1] * g[2];
        int32_t *cur = (int32_t *)malloc((size_t)ncell * sizeof(int32_t));
        if (cur == NULL) { status = APRNET_ERR_NOMEM; break; }
        int bad = 0;

        /* inherit coarser particles from the parent level */
        #pragma omp parallel for schedule(dynamic, 1024) if(ncell > NN_PAR_MIN)
        for (int64_t i = 0; i < ncell; i++) {
            int32_t v = -1;
            if (prev != NULL) {
                int64_t x = i % g[2], y = (i / g[2]) % g[1], z = i / (g[1] * g[2]);
                int64_t pi = ((z >> 1) * pg[1] + (y >> 1)) * pg[2] + (x >> 1);
                int32_t pv = prev[pi];
                if (pv >= 0 && pv < n_particles) v = pv;
            }
            cur[i] = v;
        }
        /* particles and tree nodes of this level (positions are distinct: checked sorted) */
        #pragma omp parallel for schedule(dynamic, 1024) reduction(|:bad) if(level_offsets[l + 1] - level_offsets[l] > NN_PAR_MIN)
        for (int64_t p = level_offsets[l]; p < level_offsets[l + 1]; p++) {
            int64_t c[3];
            nn_coord3(coords, ndim, p, c);
            int64_t i = (c[0] * g[1] + c[1]) * g[2] + c[2];
            if (cur[i] != -1) bad |= 1;
            cur[i] = (int32_t)p;
        }
        #pragma omp parallel for schedule(dynamic, 1024) reduction(|:bad) if(tree_offsets[l + 1] - tree_offsets[l] > NN_PAR_MIN)
        for (int64_t t = tree_offsets[l]; t < tree_offsets[l + 1]; t++) {
            int64_t c[3];
            nn_coord3(tree_coords, ndim, t, c);
            int64_t i = (c[0] * g[1] + c[1]) * g[2] + c[2];
            if (cur[i] != -1) bad |= 1;  /* covered by a coarser or same-level particle */
            cur[i] = (int32_t)(n_particles + t);
        }
        /* every cell must be covered: particles form a partition of the image */
        #pragma omp parallel for schedule(dynamic, 1024) reduction(|:bad) if(ncell > NN_PAR_MIN)
        for (int64_t i = 0; i < ncell; i++)
            if (cur[i] < 0) bad |= 1;
        if (bad) { free(cur); status = APRNET_ERR_ARG; break; }

        /* children of the tree nodes one level up */
        if (children != NULL && l > 0) {
            #pragma omp parallel for schedule(dynamic, 1024) if(tree_offsets[l] - tree_offsets[l - 1] > NN_PAR_MIN)
            for (int64_t t = tree_offsets[l - 1]; t < tree_offsets[l]; t++) {
                int64_t c[3];
                nn_coord3(tree_coords, ndim, t, c);
                for (int j = 0; j < nchild; j++) {
                    int64_t cc[3];
                    if (ndim == 3) {
                        cc[0] = 2 * c[0] + ((j >> 2) & 1); cc[1] = 2 * c[1] + ((j >> 1) & 1); cc[2] = 2 * c[2] + (j & 1);
                    } else {
                        cc[0] = 0; cc[1] = 2 * c[1] + ((j >> 1) & 1); cc[2] = 2 * c[2] + (j & 1);
                    }
                    int32_t v = -1;
                    if (cc[0] < g[0] && cc[1] < g[1] && cc[2] < g[2])
                        v = cur[(cc[0] * g[1] + cc[1]) * g[2] + cc[2]];
                    children[t * nchild + j] = v;
                }
            }
        }
        /* convolution rulebook of this level's particles */
        if (rulebook != NULL) {
            #pragma omp parallel for schedule(dynamic, 1024) if(level_offsets[l + 1] - level_offsets[l] > NN_PAR_MIN / 16)
            for (int64_t p = level_offsets[l]; p < level_offsets[l + 1]; p++) {
                int64_t c[3];
                nn_coord3(coords, ndim, p, c);
                int32_t *out = rulebook + p * K;
                int64_t o = 0;
                for (int dz = -(kz / 2); dz <= kz / 2; dz++) {
                    int64_t z = c[0] + dz;
                    for (int dy = -r; dy <= r; dy++) {
                        int64_t y = c[1] + dy;
                        for (int dx = -r; dx <= r; dx++, o++) {
                            int64_t x = c[2] + dx;
                            if (z < 0 || z >= g[0] || y < 0 || y >= g[1] || x < 0 || x >= g[2])
                                out[o] = zero_index;
                            else
                                out[o] = cur[(z * g[1] + y) * g[2] + x];
                        }
                    }
                }
            }
        }
        free(prev);
        prev = cur;
        pg[0] = g[0]; pg[1] = g[1]; pg[2] = g[2];
    }
    free(prev);
    return status;
}

#define NN_SCATTER_ADD(NAME, T)                                                                  \
    int NAME(const T *src, int64_t n_rows, int64_t n_cols, const int32_t *index,                \
             T *dst, int64_t n_dst) {                                                           \
        if (n_rows < 0 || n_cols < 0 || n_dst < 0) return APRNET_ERR_ARG;                       \
        if (n_rows == 0 || n_cols == 0) return APRNET_OK;                                       \
        if (src == NULL || index == NULL || dst == NULL) return APRNET_ERR_ARG;                 \
        int bad = 0;                                                                            \
        _Pragma("omp parallel reduction(|:bad) if(n_rows > NN_PAR_MIN)")                                                \
        {                                                                                       \
            int nth = 1, tid = 0;                                                               \
            NN_THREAD_IDS(nth, tid);                                                            \
            int64_t lo = n_dst * tid / nth, hi = n_dst * (tid + 1) / nth;                       \
            for (int64_t i = 0; i < n_rows; i++) {                                              \
                int64_t j = index[i];                                                           \
                if (j < 0 || j >= n_dst) { bad |= 1; continue; }                                \
                if (j < lo || j >= hi) continue;                                                \
                const T *s = src + i * n_cols;                                                  \
                T *d = dst + j * n_cols;                                                        \
                for (int64_t c = 0; c < n_cols; c++) d[c] += s[c];                              \
            }                                                                                   \
        }                                                                                       \
        return bad ? APRNET_ERR_BOUNDS : APRNET_OK;                                             \
    }

/* dst[index[i]] += src[i] for rows i. Each thread owns a contiguous block of
 * destination rows and visits the sources in order, so every destination row
 * receives its contributions in the same order for any number of threads. */
NN_SCATTER_ADD(aprnet_nn_scatter_add_f32, float)
NN_SCATTER_ADD(aprnet_nn_scatter_add_f64, double)
