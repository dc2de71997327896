/*
 * labels.c -- integer label images <-> one label per particle.
 *
 * Majority: a particle takes the label held by most pixels of its cell
 * (clipped to the image); among equally frequent labels the larger wins. The
 * labels of a cell are counted row segment by row segment in a small open-
 * addressing hash table (memory grows with the number of distinct labels in
 * a cell, not with its size; runs of one label cost one comparison per
 * pixel). Work is split over the particles of each level; every particle is
 * decided by one thread from its own pixels, so results do not depend on the
 * number of threads or the scheduling.
 *
 * Painting copies each particle's label bytes to the pixels of its cell
 * (ct_paint, ../cell_table.c), so any integer width is exact.
 */
#include "cell_table.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t *keys;
    int64_t *counts;  /* 0 marks an empty slot */
    size_t *occupied; /* occupied slots, in insertion order (to reset them) */
    size_t cap, used; /* cap is a power of two, used <= cap / 2 */
    uint64_t *row;    /* one row segment of labels, widened to uint64 */
} tally;

static int tally_init(tally *t, size_t row_len) {
    t->cap = 64;
    t->used = 0;
    t->keys = malloc(t->cap * sizeof(uint64_t));
    t->counts = calloc(t->cap, sizeof(int64_t));
    t->occupied = malloc(t->cap * sizeof(size_t));
    t->row = malloc(row_len * sizeof(uint64_t));
    return t->keys && t->counts && t->occupied && t->row;
}

static void tally_free(tally *t) {
    free(t->keys);
    free(t->counts);
    free(t->occupied);
    free(t->row);
}

static size_t slot_of(const tally *t, uint64_t key) {
    size_t h = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & (t->cap - 1);
    while (t->counts[h] && t->keys[h] != key) h = (h + 1) & (t->cap - 1);
    return h;
}

/* Doubles the table, re-inserting the occupied slots in insertion order. 0 when out of memory. */
static int tally_grow(tally *t) {
    if (t->cap > SIZE_MAX / 2 / sizeof(uint64_t)) return 0;
    tally g = {NULL, NULL, NULL, t->cap * 2, 0, t->row};
    g.keys = malloc(g.cap * sizeof(uint64_t));
    g.counts = calloc(g.cap, sizeof(int64_t));
    g.occupied = malloc(g.cap * sizeof(size_t));
    if (!g.keys || !g.counts || !g.occupied) {
        free(g.keys);
        free(g.counts);
        free(g.occupied);
        return 0;
    }
    for (size_t k = 0; k < t->used; ++k) {
        const size_t s = t->occupied[k], d = slot_of(&g, t->keys[s]);
        g.keys[d] = t->keys[s];
        g.counts[d] = t->counts[s];
        g.occupied[g.used++] = d;
    }
    free(t->keys);
    free(t->counts);
    free(t->occupied);
    *t = g;
    return 1;
}

/* counts[key] += n. 0 when out of memory. */
static int tally_add(tally *t, uint64_t key, int64_t n) {
    size_t s = slot_of(t, key);
    if (!t->counts[s]) {
        if (2 * (t->used + 1) > t->cap) {
            if (!tally_grow(t)) return 0;
            s = slot_of(t, key);
        }
        t->keys[s] = key;
        t->occupied[t->used++] = s;
    }
    t->counts[s] += n;
    return 1;
}

/* The most frequent label (ties: the larger); empties the table. */
static uint64_t tally_take(tally *t) {
    uint64_t best = 0;
    int64_t best_n = 0;
    for (size_t k = 0; k < t->used; ++k) {
        const size_t s = t->occupied[k];
        if (t->counts[s] > best_n || (t->counts[s] == best_n && t->keys[s] > best)) {
            best = t->keys[s];
            best_n = t->counts[s];
        }
        t->counts[s] = 0;
    }
    t->used = 0;
    return best;
}

/* row[0 .. n) = image[start .. start + n) widened to uint64. */
static void load_row(const void *image, int dtype, size_t start, int64_t n, uint64_t *row) {
    switch (dtype) {
    case APRNET_LABEL_U8:
        for (int64_t i = 0; i < n; ++i) row[i] = ((const uint8_t *)image)[start + i];
        break;
    case APRNET_LABEL_U16:
        for (int64_t i = 0; i < n; ++i) row[i] = ((const uint16_t *)image)[start + i];
        break;
    case APRNET_LABEL_U32:
        for (int64_t i = 0; i < n; ++i) row[i] = ((const uint32_t *)image)[start + i];
        break;
    default:
        memcpy(row, (const uint64_t *)image + start, (size_t)n * sizeof(uint64_t));
    }
}

/* Majority label of the cell [lo, hi) (z, y, x pixels). 0 when out of memory. */
static int cell_majority(const aprnet_cell_table *t, const void *image, int dtype, const int64_t lo[3],
                         const int64_t hi[3], tally *tl, uint64_t *label) {
    const size_t ny = (size_t)t->shape[1], nx = (size_t)t->shape[2];
    const int64_t n = hi[2] - lo[2];
    for (int64_t z = lo[0]; z < hi[0]; ++z)
        for (int64_t y = lo[1]; y < hi[1]; ++y) {
            load_row(image, dtype, ((size_t)z * ny + (size_t)y) * nx + (size_t)lo[2], n, tl->row);
            int64_t a = 0;
            while (a < n) { /* one run of equal labels at a time */
                int64_t b = a + 1;
                while (b < n && tl->row[b] == tl->row[a]) ++b;
                if (!tally_add(tl, tl->row[a], b - a)) return 0;
                a = b;
            }
        }
    *label = tally_take(tl);
    return 1;
}

int aprnet_labels_majority(const aprnet_cell_table *parts, const void *image, int dtype, int64_t *out,
                           const int32_t *cancel) {
    if (!ct_table_ok(parts) || !image || (parts->n > 0 && !out) || dtype < APRNET_LABEL_U8 ||
        dtype > APRNET_LABEL_U64)
        return APRNET_ERR_ARG;
    const int lmax = parts->level_max;
    int stop = 0, nomem = 0, too_large = 0;

    #pragma omp parallel if (parts->n > 4096)
    {
        tally tl;
        if (!tally_init(&tl, (size_t)parts->shape[2])) {
            #pragma omp atomic write
            nomem = 1;
        }
        for (int l = 0; l <= lmax; ++l) {
            const int sh = lmax - l;
            #pragma omp for schedule(dynamic, 256)
            for (int64_t i = parts->level_offsets[l]; i < parts->level_offsets[l + 1]; ++i) {
                if (stop || nomem) continue;
                if (ct_cancelled(cancel)) {
                    #pragma omp atomic write
                    stop = 1;
                    continue;
                }
                int64_t lo[3], hi[3];
                for (int a = 0; a < 3; ++a) {
                    lo[a] = ct_coord(parts, i, a) << sh;
                    hi[a] = (ct_coord(parts, i, a) + 1) << sh;
                    if (hi[a] > parts->shape[a]) hi[a] = parts->shape[a];
                }
                uint64_t label;
                if (!cell_majority(parts, image, dtype, lo, hi, &tl, &label)) {
                    #pragma omp atomic write
                    nomem = 1;
                    continue;
                }
                if (label > (uint64_t)INT64_MAX) {
                    #pragma omp atomic write
                    too_large = 1;
                }
                out[i] = (int64_t)label;
            }
        }
        tally_free(&tl);
    }
    if (nomem) return APRNET_ERR_NOMEM;
    if (stop) return APRNET_ERR_CANCELLED;
    return too_large ? APRNET_ERR_ARG : APRNET_OK;
}

int aprnet_labels_paint(const aprnet_cell_table *parts, const void *labels, int64_t label_bytes,
                        const int64_t *region, void *out, const int32_t *cancel) {
    if (label_bytes != 1 && label_bytes != 2 && label_bytes != 4 && label_bytes != 8) return APRNET_ERR_ARG;
    return ct_paint(parts, labels, (size_t)label_bytes, region, out, cancel);
}
