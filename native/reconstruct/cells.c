/*
 * cells.c -- checks of a set of cells: aprnet_cells_check (levels, grid
 * ranges, order; the volume covered) in one sequential pass, and
 * aprnet_cells_nested (does a cell lie inside a coarser one?).
 *
 * Nesting: with cells sorted and inside their level grids (checked in Python) and a
 * total cell volume equal to the image's, the cells tile the image exactly
 * once unless a cell lies inside a coarser one. For each row of each level
 * and each coarser level that has cells, the row's cells (sorted by x) are
 * walked beside the cells of the ancestor row at that level (also sorted by
 * x, so one cursor moves forward only): linear in the cells visited. Rows
 * are independent; the result, the smallest index of a nested cell, does not
 * depend on the number of threads.
 */
#include "cell_table.h"

int aprnet_cells_check(const int64_t shape[3], int ndim, int level_max, int64_t n, const uint8_t *levels,
                       const int32_t *coords, int64_t *level_offsets, int64_t *volume, const int64_t *row_base,
                       int64_t *row_start, int64_t *bad, int32_t *problem) {
    if (!shape || (ndim != 2 && ndim != 3) || level_max < 0 || level_max > 30 || n < 0 ||
        (n > 0 && (!levels || !coords)) || !level_offsets || !volume || !bad || !problem)
        return APRNET_ERR_ARG;
    for (int a = 0; a < 3; ++a)
        if (shape[a] < 1 || shape[a] > ((int64_t)1 << 30)) return APRNET_ERR_ARG;
    if (ndim == 2 && shape[0] != 1) return APRNET_ERR_ARG;
    *bad = -1;
    *problem = 0;
    if (row_start && !row_base) return APRNET_ERR_ARG;
    for (int l = 0; l <= level_max + 1; ++l) level_offsets[l] = 0;
    int64_t vol = 0, prev_key = -1;
    int prev_level = -1;
    for (int64_t i = 0; i < n; ++i) {
        const int l = levels[i];
        int32_t why = 0;
        if (l > level_max) why = 1;
        else if (l < prev_level) why = 2;
        const int sh = level_max - l;
        int64_t key = 0, cells = 1, row = 0;
        for (int a = 3 - ndim; a < 3 && !why; ++a) {
            const int64_t c = coords[i * ndim + a - (3 - ndim)], m = ct_cells_along(shape[a], sh);
            if (c < 0 || c >= m) why = 3;
            key = key * m + c;
            if (a < 2) row = row * m + c;
            const int64_t lo = c << sh, hi = (c + 1) << sh;
            cells *= (hi < shape[a] ? hi : shape[a]) - lo;
        }
        if (!why && l == prev_level && key <= prev_key) why = 4;
        if (why) {
            *bad = i;
            *problem = why;
            return APRNET_ERR_DATA;
        }
        vol += cells; /* <= the pixel count, which is below 2^62 (checked by the caller) */
        level_offsets[l + 1] += 1;
        if (row_start) row_start[row_base[l] + 1 + row] += 1; /* counts now, starts below */
        prev_level = l;
        prev_key = key;
    }
    for (int l = 0; l <= level_max; ++l) level_offsets[l + 1] += level_offsets[l];
    if (row_start) {
        for (int l = 0; l <= level_max; ++l) {
            const int sh = level_max - l;
            const int64_t nrows = ct_cells_along(shape[0], sh) * ct_cells_along(shape[1], sh);
            int64_t *start = row_start + row_base[l];
            start[0] = level_offsets[l];
            for (int64_t r = 0; r < nrows; ++r) start[r + 1] += start[r];
        }
    }
    *volume = vol;
    return APRNET_OK;
}

/* Smallest index in row (level lb; zl, yl) of a cell inside a cell of a coarser level, or -1. */
static int64_t nested_in_row(const aprnet_cell_table *t, int lb, int64_t zl, int64_t yl) {
    int64_t a, b;
    ct_row_range(t, lb, zl, yl, &a, &b);
    if (a == b) return -1;
    int64_t found = -1;
    for (int la = 0; la < lb; ++la) {
        if (t->level_offsets[la] == t->level_offsets[la + 1]) continue;
        const int s = lb - la;
        int64_t ca, cb;
        ct_row_range(t, la, zl >> s, yl >> s, &ca, &cb);
        int64_t i = ct_lower_bound_x(t, ca, cb, ct_coord(t, a, 2) >> s);
        for (int64_t j = a; j < b && i < cb && (found < 0 || j < found); ++j) {
            const int64_t ax = ct_coord(t, j, 2) >> s;
            while (i < cb && ct_coord(t, i, 2) < ax) ++i;
            if (i < cb && ct_coord(t, i, 2) == ax) {
                found = j;
                break;
            }
        }
    }
    return found;
}

int aprnet_cells_nested(const aprnet_cell_table *t, int64_t *first_nested, const int32_t *cancel) {
    if (!ct_table_ok(t) || !first_nested) return APRNET_ERR_ARG;
    *first_nested = -1;
    int64_t found = -1;
    int stop = 0;
    for (int lb = 1; lb <= t->level_max && !stop; ++lb) {
        if (t->level_offsets[lb] == t->level_offsets[lb + 1]) continue;
        const int sh = t->level_max - lb;
        const int64_t ny = ct_cells_along(t->shape[1], sh), nrows = ct_cells_along(t->shape[0], sh) * ny;
        #pragma omp parallel for schedule(dynamic, 256) if (nrows > 4096)
        for (int64_t r = 0; r < nrows; ++r) {
            if (stop) continue;
            if (ct_cancelled(cancel)) {
                #pragma omp atomic write
                stop = 1;
                continue;
            }
            const int64_t hit = nested_in_row(t, lb, r / ny, r % ny);
            if (hit >= 0) {
                #pragma omp critical(aprnet_cells_nested)
                if (found < 0 || hit < found) found = hit;
            }
        }
        if (found >= 0) break; /* levels are in index order: a later level only has larger indices */
    }
    if (stop) return APRNET_ERR_CANCELLED;
    *first_nested = found;
    return found >= 0 ? APRNET_ERR_DATA : APRNET_OK;
}
