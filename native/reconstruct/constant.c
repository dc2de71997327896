/*
 * constant.c -- the piecewise constant image of particle values at any level.
 *
 * The output is a grid of cells of one level L (L = level_max: pixels). Each
 * output row (z, y) is filled by one thread, in a fixed order, so results do
 * not depend on the number of OpenMP threads.
 *
 * Particles of level l <= L cover whole output cells: they are located in
 * the matching level-l row through the row table and a binary search on x,
 * and their value is copied. An output cell that holds finer particles (an
 * interior tree node) takes the APR tree's value: with REDUCE_MEAN the mean
 * of its children that lie inside the image, each child counting once,
 * recursively down to the particles (LibAPR's tree mean). Unrolled, that is
 * the sum of the finer particles' values times weights: along each axis a
 * factor 1/2 for every ancestor (from L down) that has two children inside
 * the image on that axis, 1 for one child. The weights are powers of two; the
 * sum is accumulated in double and divided by the sum of the weights (exactly
 * 1 for a partition). REDUCE_MAX takes the largest value inside instead.
 * Only the rows and particles under the requested cells are visited.
 */
#include <stdlib.h>
#include <string.h>

#include "cell_table.h"

/* Below this many output values a call runs on one thread (thread start-up costs more). */
#define PARALLEL_MIN_VALUES 65536

/* Weight of cell c of level l inside its ancestor of level L along one axis
 * of n_pixels pixels (see the top of the file). */
static double axis_weight(int64_t c, int l, int L, int64_t n_pixels, int lmax) {
    const int s = l - L;
    if (((c >> s) + 1) << s <= ct_cells_along(n_pixels, lmax - l)) /* the ancestor is whole: every step halves */
        return 1.0 / (double)((int64_t)1 << s);
    double w = 1.0;
    for (int m = l - 1; m >= L; --m) {
        const int64_t a = c >> (l - m);
        if (2 * a + 1 < ct_cells_along(n_pixels, lmax - m - 1)) w *= 0.5;
    }
    return w;
}

typedef struct {
    const aprnet_cell_table *parts;
    const float *values; /* NULL: the particle's level */
    int64_t nch;
    int level, reduce;
    int64_t x0, x1, sx, ox; /* x range and step in level cells, output cells per row */
} const_job;

/* Value of channel ch of particle i (of level l). */
static inline float value_of(const const_job *j, int64_t i, int l, int64_t ch) {
    return j->values ? j->values[i * j->nch + ch] : (float)l;
}

/* Particles of levels <= L in output row (zL, yL): copy their values. */
static void fill_coarse(const const_job *j, int64_t zL, int64_t yL, float *orow) {
    const aprnet_cell_table *t = j->parts;
    for (int l = 0; l <= j->level; ++l) {
        if (t->level_offsets[l] == t->level_offsets[l + 1]) continue;
        const int sh = j->level - l;
        int64_t a, b;
        ct_row_range(t, l, zL >> sh, yL >> sh, &a, &b);
        for (int64_t i = ct_lower_bound_x(t, a, b, j->x0 >> sh); i < b; ++i) {
            const int64_t cx = ct_coord(t, i, 2);
            int64_t xs = cx << sh, xe = (cx + 1) << sh;
            if (xs >= j->x1) break;
            if (xs < j->x0) xs = j->x0;
            if (xe > j->x1) xe = j->x1;
            const int64_t k0 = (xs - j->x0 + j->sx - 1) / j->sx, k1 = (xe - j->x0 + j->sx - 1) / j->sx;
            for (int64_t k = k0; k < k1; ++k)
                for (int64_t ch = 0; ch < j->nch; ++ch) orow[k * j->nch + ch] = value_of(j, i, l, ch);
        }
    }
}

/* Particles finer than L under output row (zL, yL): reduce them into acc / wsum (per output cell). */
static void reduce_fine(const const_job *j, int64_t zL, int64_t yL, double *acc, double *wsum) {
    const aprnet_cell_table *t = j->parts;
    const int lmax = t->level_max, L = j->level;
    for (int l = L + 1; l <= lmax; ++l) {
        if (t->level_offsets[l] == t->level_offsets[l + 1]) continue;
        const int s = l - L;
        int64_t zend = (zL + 1) << s, yend = (yL + 1) << s;
        const int64_t nz = ct_cells_along(t->shape[0], lmax - l), ny = ct_cells_along(t->shape[1], lmax - l);
        if (zend > nz) zend = nz;
        if (yend > ny) yend = ny;
        for (int64_t zl = zL << s; zl < zend; ++zl) {
            const double wz = axis_weight(zl, l, L, t->shape[0], lmax);
            for (int64_t yl = yL << s; yl < yend; ++yl) {
                const double wzy = wz * axis_weight(yl, l, L, t->shape[1], lmax);
                int64_t a, b;
                ct_row_range(t, l, zl, yl, &a, &b);
                for (int64_t i = ct_lower_bound_x(t, a, b, j->x0 << s); i < b; ++i) {
                    const int64_t cx = ct_coord(t, i, 2), xL = cx >> s;
                    if (xL >= j->x1) break;
                    if ((xL - j->x0) % j->sx) continue;
                    const int64_t k = (xL - j->x0) / j->sx;
                    double *ac = acc + k * j->nch;
                    if (j->reduce == APRNET_REDUCE_MAX) {
                        for (int64_t ch = 0; ch < j->nch; ++ch) {
                            const double v = value_of(j, i, l, ch);
                            if (wsum[k] == 0.0 || v > ac[ch] || v != v) ac[ch] = v;
                        }
                        wsum[k] = 1.0;
                    } else {
                        const double w = wzy * axis_weight(cx, l, L, t->shape[2], lmax);
                        for (int64_t ch = 0; ch < j->nch; ++ch) ac[ch] += w * (double)value_of(j, i, l, ch);
                        wsum[k] += w;
                    }
                }
            }
        }
    }
}

int aprnet_reconstruct_constant(const aprnet_cell_table *parts, const float *values, int64_t nch, int level,
                                int reduce, const int64_t *region, const int64_t *step, float *out,
                                const int32_t *cancel) {
    if (!ct_table_ok(parts) || nch < 1 || !out || level < 0 || level > parts->level_max)
        return APRNET_ERR_ARG;
    if ((reduce != APRNET_REDUCE_MEAN && reduce != APRNET_REDUCE_MAX) || (!values && nch != 1))
        return APRNET_ERR_ARG;
    const int sh = parts->level_max - level;
    const int64_t grid[3] = {ct_cells_along(parts->shape[0], sh), ct_cells_along(parts->shape[1], sh),
                             ct_cells_along(parts->shape[2], sh)};
    if (!ct_region_ok(grid, region)) return APRNET_ERR_ARG;
    int64_t st[3] = {1, 1, 1}, cnt[3];
    for (int a = 0; a < 3; ++a) {
        if (step) st[a] = step[a];
        if (st[a] < 1) return APRNET_ERR_ARG;
        cnt[a] = (region[2 * a + 1] - region[2 * a] + st[a] - 1) / st[a];
    }
    const int64_t ox = cnt[2], nrows = cnt[0] * cnt[1];
    if (ox == 0 || nrows == 0) return APRNET_OK;
    if (nch > INT64_MAX / 8 / ox) return APRNET_ERR_ARG;
    const const_job job = {parts, values, nch, level, reduce, region[4], region[5], st[2], ox};
    const int fine = level < parts->level_max && parts->level_offsets[level + 1] < parts->n;
    int stop = 0, nomem = 0;

    #pragma omp parallel if (nrows * ox * nch > PARALLEL_MIN_VALUES)
    {
        double *acc = fine ? malloc((size_t)(ox * nch) * sizeof(double)) : NULL;
        double *wsum = fine ? malloc((size_t)ox * sizeof(double)) : NULL;
        if (fine && (!acc || !wsum)) {
            #pragma omp atomic write
            nomem = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < nrows; ++r) {
            if (stop || nomem) continue;
            if (ct_cancelled(cancel)) {
                #pragma omp atomic write
                stop = 1;
                continue;
            }
            const int64_t zL = region[0] + (r / cnt[1]) * st[0], yL = region[2] + (r % cnt[1]) * st[1];
            float *orow = out + r * ox * nch;
            fill_coarse(&job, zL, yL, orow);
            if (!fine) continue;
            memset(acc, 0, (size_t)(ox * nch) * sizeof(double));
            memset(wsum, 0, (size_t)ox * sizeof(double));
            reduce_fine(&job, zL, yL, acc, wsum);
            for (int64_t k = 0; k < ox; ++k) {
                if (wsum[k] == 0.0) continue;
                const double norm = reduce == APRNET_REDUCE_MAX ? 1.0 : wsum[k];
                for (int64_t ch = 0; ch < nch; ++ch) orow[k * nch + ch] = (float)(acc[k * nch + ch] / norm);
            }
        }
        free(acc);
        free(wsum);
    }
    if (nomem) return APRNET_ERR_NOMEM;
    return stop ? APRNET_ERR_CANCELLED : APRNET_OK;
}
