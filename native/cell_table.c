/*
 * cell_table.c -- checks on cell tables and painting one value per cell into
 * a pixel region (see cell_table.h).
 *
 * Painting scans the output rows (one (z, y) row per step) level by level; at
 * each level the cells of the matching level row are found through the row
 * table and a binary search on x, so only the cells overlapping the region
 * are touched. Each output pixel is written by one thread.
 */
#include "cell_table.h"

#include <string.h>

int ct_table_ok(const aprnet_cell_table *t) {
    if (!t || (t->ndim != 2 && t->ndim != 3)) return 0;
    if (t->level_max < 0 || t->level_max > 30) return 0;
    if (t->shape[0] < 1 || t->shape[1] < 1 || t->shape[2] < 1) return 0;
    if (t->ndim == 2 && t->shape[0] != 1) return 0;
    if (t->n < 0 || (t->n > 0 && (!t->coords || !t->row_start))) return 0;
    if (!t->level_offsets || !t->row_base) return 0;
    return 1;
}

int ct_region_ok(const int64_t n[3], const int64_t *region) {
    if (!region) return 0;
    for (int a = 0; a < 3; ++a) {
        if (region[2 * a] < 0 || region[2 * a] > region[2 * a + 1] || region[2 * a + 1] > n[a]) return 0;
    }
    return 1;
}

int64_t ct_find_cell(const aprnet_cell_table *t, int level, int64_t z, int64_t y, int64_t x) {
    if (t->n == 0 || t->level_offsets[level] == t->level_offsets[level + 1]) return -1;
    int64_t a, b;
    ct_row_range(t, level, z, y, &a, &b);
    int64_t i = ct_lower_bound_x(t, a, b, x);
    return (i < b && ct_coord(t, i, 2) == x) ? i : -1;
}

/* dst[0 .. n) = the value v of vb bytes (typed stores for the common widths). */
static void fill_values(unsigned char *dst, const unsigned char *v, size_t vb, int64_t n) {
    switch (vb) {
    case 1:
        memset(dst, v[0], (size_t)n);
        return;
    case 2: {
        uint16_t a;
        memcpy(&a, v, 2);
        for (int64_t i = 0; i < n; ++i) ((uint16_t *)dst)[i] = a;
        return;
    }
    case 4: {
        uint32_t a;
        memcpy(&a, v, 4);
        for (int64_t i = 0; i < n; ++i) ((uint32_t *)dst)[i] = a;
        return;
    }
    case 8: {
        uint64_t a;
        memcpy(&a, v, 8);
        for (int64_t i = 0; i < n; ++i) ((uint64_t *)dst)[i] = a;
        return;
    }
    default:
        for (int64_t i = 0; i < n; ++i) memcpy(dst + (size_t)i * vb, v, vb);
    }
}

/* Below this many output bytes a call runs on one thread (thread start-up costs more). */
#define PARALLEL_MIN_BYTES 262144

int ct_paint(const aprnet_cell_table *t, const void *values, size_t value_bytes, const int64_t *region, void *out,
             const int32_t *cancel) {
    if (!ct_table_ok(t) || !ct_region_ok(t->shape, region) || value_bytes < 1 || !out || (t->n > 0 && !values))
        return APRNET_ERR_ARG;
    const int64_t z0 = region[0], y0 = region[2], x0 = region[4], x1 = region[5];
    const int64_t ry = region[3] - region[2], rx = x1 - x0;
    const int64_t nrows = (region[1] - region[0]) * ry;
    if (nrows == 0 || rx == 0) return APRNET_OK;
    if ((size_t)rx > SIZE_MAX / value_bytes || (size_t)nrows > SIZE_MAX / ((size_t)rx * value_bytes))
        return APRNET_ERR_ARG;
    const size_t row_bytes = (size_t)rx * value_bytes;
    const int lmax = t->level_max;
    const unsigned char *vals = values;
    int stop = 0;

    #pragma omp parallel for schedule(static) if ((size_t)nrows * row_bytes > PARALLEL_MIN_BYTES)
    for (int64_t r = 0; r < nrows; ++r) {
        if (stop) continue;
        if (ct_cancelled(cancel)) {
            #pragma omp atomic write
            stop = 1;
            continue;
        }
        const int64_t z = z0 + r / ry, y = y0 + r % ry;
        unsigned char *orow = (unsigned char *)out + (size_t)r * row_bytes;
        for (int l = 0; l <= lmax; ++l) {
            if (t->level_offsets[l] == t->level_offsets[l + 1]) continue;
            const int sh = lmax - l;
            int64_t a, b;
            ct_row_range(t, l, z >> sh, y >> sh, &a, &b);
            for (int64_t i = ct_lower_bound_x(t, a, b, x0 >> sh); i < b; ++i) {
                const int64_t cx = ct_coord(t, i, 2);
                int64_t xs = cx << sh, xe = (cx + 1) << sh;
                if (xs >= x1) break;
                if (xs < x0) xs = x0;
                if (xe > x1) xe = x1;
                fill_values(orow + (size_t)(xs - x0) * value_bytes, vals + (size_t)i * value_bytes, value_bytes,
                            xe - xs);
            }
        }
    }
    return stop ? APRNET_ERR_CANCELLED : APRNET_OK;
}
