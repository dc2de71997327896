/* rc_common.h -- the internal header of the reconstruction part
 * (native/reconstruct/): access to an aprnet_cell_table (cells of one row,
 * lookups by coordinate) and the argument checks shared by constant.c and
 * smooth.c. Not part of the public C API (aprnet.h) and not seen by cffi. */
#ifndef APRNET_RC_COMMON_H
#define APRNET_RC_COMMON_H

#include <stdint.h>

#include "aprnet.h"

/* Below this many output values a call runs on one thread (thread start-up costs more). */
#define RC_PARALLEL_MIN 65536

/* Cells along an axis of n pixels at sh levels above the pixel level: ceil(n / 2^sh). */
static inline int64_t rc_cells_along(int64_t n, int sh) { return (n + ((int64_t)1 << sh) - 1) >> sh; }

/* Coordinate of cell i on axis 0 = z, 1 = y, 2 = x (2D tables have no z column). */
static inline int64_t rc_coord(const aprnet_cell_table *t, int64_t i, int axis) {
    if (t->ndim == 2) return axis == 0 ? 0 : t->coords[i * 2 + axis - 1];
    return t->coords[i * 3 + axis];
}

static inline int rc_cancelled(const int32_t *cancel) {
    return cancel && *(const volatile int32_t *)cancel;
}

/* 1 when the table's header is consistent (the arrays themselves are checked in Python). */
int rc_table_ok(const aprnet_cell_table *t);

/* 1 when region (z0, z1, y0, y1, x0, x1) lies inside the grid n[3]. */
int rc_region_ok(const int64_t n[3], const int64_t *region);

/* Cells of row (zl, yl) at `level`: [*a, *b). */
void rc_row_range(const aprnet_cell_table *t, int level, int64_t zl, int64_t yl, int64_t *a, int64_t *b);

/* First index in [a, b) whose x coordinate is >= xq (x is sorted within a row). */
int64_t rc_lower_bound_x(const aprnet_cell_table *t, int64_t a, int64_t b, int64_t xq);

/* Index of cell (level, z, y, x) in t, or -1. Coordinates must be inside the level grid. */
int64_t rc_find_cell(const aprnet_cell_table *t, int level, int64_t z, int64_t y, int64_t x);

#endif /* APRNET_RC_COMMON_H */
