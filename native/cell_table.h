/*
 * cell_table.h -- internal helpers on aprnet_cell_table (aprnet.h), shared by
 * the reconstruction (reconstruct/) and label (labels/) parts: table and
 * region checks, the row walk (row table, then binary search on x), cell
 * lookup and painting one value per cell into a pixel region (cell_table.c).
 * Not part of the public C API (aprnet.h) and not seen by cffi.
 */
#ifndef APRNET_CELL_TABLE_H
#define APRNET_CELL_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "aprnet.h"

/* Cells along an axis of n pixels at a level sh levels above level_max. */
static inline int64_t ct_cells_along(int64_t n, int sh) { return (n + ((int64_t)1 << sh) - 1) >> sh; }

/* Coordinate of cell i on axis 0 = z, 1 = y, 2 = x (2D tables have no z column). */
static inline int64_t ct_coord(const aprnet_cell_table *t, int64_t i, int axis) {
    if (t->ndim == 2) return axis == 0 ? 0 : t->coords[i * 2 + axis - 1];
    return t->coords[i * 3 + axis];
}

/* Cells of row (zl, yl) at `level`: [*a, *b). */
static inline void ct_row_range(const aprnet_cell_table *t, int level, int64_t zl, int64_t yl, int64_t *a,
                                int64_t *b) {
    int64_t ny = ct_cells_along(t->shape[1], t->level_max - level);
    int64_t r = t->row_base[level] + zl * ny + yl;
    *a = t->row_start[r];
    *b = t->row_start[r + 1];
}

/* First index in [a, b) whose x coordinate is >= xq (x sorted within a row). */
static inline int64_t ct_lower_bound_x(const aprnet_cell_table *t, int64_t a, int64_t b, int64_t xq) {
    while (a < b) {
        int64_t m = a + (b - a) / 2;
        if (ct_coord(t, m, 2) < xq) a = m + 1; else b = m;
    }
    return a;
}

static inline int ct_cancelled(const int32_t *cancel) { return cancel && *(const volatile int32_t *)cancel; }

/* 1 when the table's header fields are usable (the row table itself is trusted). */
int ct_table_ok(const aprnet_cell_table *t);

/* 1 when region (z0, z1, y0, y1, x0, x1) is a half-open box inside the grid n[3]
 * (the table's image: t->shape; a coarser level's grid for reconstructions there). */
int ct_region_ok(const int64_t n[3], const int64_t *region);

/* Index of cell (level, z, y, x) in t, or -1. Coordinates must be inside the level grid. */
int64_t ct_find_cell(const aprnet_cell_table *t, int level, int64_t z, int64_t y, int64_t x);

/* Piecewise constant image of region: every pixel of the region gets the
 * value_bytes bytes of the cell covering it (values + i * value_bytes). out
 * holds (z1-z0)*(y1-y0)*(x1-x0) values, aligned for value_bytes in 2, 4, 8.
 * Split by output rows: independent of the number of threads. */
int ct_paint(const aprnet_cell_table *t, const void *values, size_t value_bytes, const int64_t *region, void *out,
             const int32_t *cancel);

#endif /* APRNET_CELL_TABLE_H */
