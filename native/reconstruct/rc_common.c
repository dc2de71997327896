/* rc_common.c -- cell table access shared by the reconstruction kernels (see rc_common.h). */
#include "rc_common.h"

int rc_table_ok(const aprnet_cell_table *t) {
    if (!t || (t->ndim != 2 && t->ndim != 3)) return 0;
    if (t->level_max < 0 || t->level_max > 30) return 0;
    if (t->shape[0] < 1 || t->shape[1] < 1 || t->shape[2] < 1) return 0;
    if (t->ndim == 2 && t->shape[0] != 1) return 0;
    if (t->n < 0 || (t->n > 0 && (!t->coords || !t->row_start))) return 0;
    if (!t->level_offsets || !t->row_base) return 0;
    return 1;
}

int rc_region_ok(const int64_t n[3], const int64_t *region) {
    if (!region) return 0;
    for (int a = 0; a < 3; ++a) {
        if (region[2 * a] < 0 || region[2 * a] > region[2 * a + 1] || region[2 * a + 1] > n[a]) return 0;
    }
    return 1;
}

void rc_row_range(const aprnet_cell_table *t, int level, int64_t zl, int64_t yl, int64_t *a, int64_t *b) {
    int sh = t->level_max - level;
    int64_t ny = rc_cells_along(t->shape[1], sh);
    int64_t r = t->row_base[level] + zl * ny + yl;
    *a = t->row_start[r];
    *b = t->row_start[r + 1];
}

int64_t rc_lower_bound_x(const aprnet_cell_table *t, int64_t a, int64_t b, int64_t xq) {
    while (a < b) {
        int64_t m = a + (b - a) / 2;
        if (rc_coord(t, m, 2) < xq) a = m + 1; else b = m;
    }
    return a;
}

int64_t rc_find_cell(const aprnet_cell_table *t, int level, int64_t z, int64_t y, int64_t x) {
    if (t->n == 0 || t->level_offsets[level] == t->level_offsets[level + 1]) return -1;
    int64_t a, b;
    rc_row_range(t, level, z, y, &a, &b);
    int64_t i = rc_lower_bound_x(t, a, b, x);
    return (i < b && rc_coord(t, i, 2) == x) ? i : -1;
}
