/*
 * smooth.c -- the smooth pixel image of particle values.
 *
 * A pixel y in a cell of side s = 2^(level_max - l) (the implied
 * resolution R*(y)) takes the weighted mean of the particles whose
 * collocation points (centres of their cells, clipped to the image) lie
 * within Euclidean distance s of the pixel centre, with tent weights
 * w = 1 - |x_p - y| / s. This is the form of eq. 2.14 (weights >= 0 that sum
 * to one over N(y, R*(y))). The particle's own centre is always within
 * reach, so the weights never all vanish; pixel-level particles reproduce
 * their own value exactly. Candidates are found by descending the interior
 * tree from the root, pruning cells whose box is farther than s from the
 * pixels of the current row segment.
 *
 * Work is split by slabs of rows; each output pixel is written by one thread
 * only and its value is computed in a fixed order, so results do not depend
 * on the number of OpenMP threads.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cell_table.h"

/* ---- smooth ---------------------------------------------------------- */

typedef struct {
    double c[3];   /* collocation point (z, y, x), pixel units, pixel centres at i + 0.5 */
    int64_t index; /* particle index */
} candidate;

typedef struct {
    candidate *items;
    int64_t size, cap;
    int failed;
} cand_buf;

typedef struct {
    double lo[3], hi[3]; /* pixel-centre ranges of the row segment */
    double reach;        /* s: only points closer than this count */
} seg_query;

static void push(cand_buf *buf, const candidate *c) {
    if (buf->failed) return;
    if (buf->size == buf->cap) {
        int64_t cap = buf->cap ? buf->cap * 2 : 64;
        candidate *p = realloc(buf->items, (size_t)cap * sizeof(candidate));
        if (!p) { buf->failed = 1; return; }
        buf->items = p;
        buf->cap = cap;
    }
    buf->items[buf->size++] = *c;
}

static void collect(const aprnet_cell_table *parts, const aprnet_cell_table *tree, int level,
                    const int64_t cz[3], const seg_query *q, cand_buf *buf) {
    const int sh = parts->level_max - level;
    double lo[3], hi[3], d2 = 0.0;
    for (int a = 0; a < 3; ++a) {
        int64_t s = cz[a] << sh, e = (cz[a] + 1) << sh;
        if (e > parts->shape[a]) e = parts->shape[a];
        lo[a] = (double)s;
        hi[a] = (double)e;
        double gap = 0.0;
        if (lo[a] > q->hi[a]) gap = lo[a] - q->hi[a];
        else if (q->lo[a] > hi[a]) gap = q->lo[a] - hi[a];
        d2 += gap * gap;
    }
    if (d2 >= q->reach * q->reach) return;
    int64_t i = ct_find_cell(parts, level, cz[0], cz[1], cz[2]);
    if (i >= 0) {
        candidate c;
        for (int a = 0; a < 3; ++a) c.c[a] = 0.5 * (lo[a] + hi[a]);
        c.index = i;
        push(buf, &c);
        return;
    }
    if (level >= parts->level_max || ct_find_cell(tree, level, cz[0], cz[1], cz[2]) < 0) return;
    const int child_sh = sh - 1;
    int64_t n[3];
    for (int a = 0; a < 3; ++a) n[a] = ct_cells_along(parts->shape[a], child_sh);
    for (int dz = 0; dz < 2; ++dz)
        for (int dy = 0; dy < 2; ++dy)
            for (int dx = 0; dx < 2; ++dx) {
                int64_t ch[3] = {2 * cz[0] + dz, 2 * cz[1] + dy, 2 * cz[2] + dx};
                if (ch[0] < n[0] && ch[1] < n[1] && ch[2] < n[2])
                    collect(parts, tree, level + 1, ch, q, buf);
            }
}

/* Weighted mean over the candidates for pixels [xs, xe) of row (z, y); s = reach. */
static void blend_segment(const cand_buf *buf, const float *values, int64_t nch, double pz, double py,
                          int64_t xs, int64_t xe, double s, double *acc, double *wsum, float *dst) {
    const int64_t len = xe - xs;
    memset(acc, 0, (size_t)(len * nch) * sizeof(double));
    memset(wsum, 0, (size_t)len * sizeof(double));
    for (int64_t k = 0; k < buf->size; ++k) {
        const candidate *c = &buf->items[k];
        const double dz = c->c[0] - pz, dy = c->c[1] - py;
        const double r2 = dz * dz + dy * dy;
        if (r2 >= s * s) continue;
        const double half = sqrt(s * s - r2); /* |dx| < half */
        int64_t a = (int64_t)floor(c->c[2] - half - 0.5), b = (int64_t)ceil(c->c[2] + half - 0.5) + 1;
        if (a < xs) a = xs;
        if (b > xe) b = xe;
        const float *v = values + c->index * nch;
        for (int64_t x = a; x < b; ++x) {
            const double dx = c->c[2] - ((double)x + 0.5);
            const double d = sqrt(r2 + dx * dx);
            if (d >= s) continue;
            const double w = 1.0 - d / s;
            wsum[x - xs] += w;
            double *ac = acc + (x - xs) * nch;
            for (int64_t ch = 0; ch < nch; ++ch) ac[ch] += w * (double)v[ch];
        }
    }
    for (int64_t x = 0; x < len; ++x)
        for (int64_t ch = 0; ch < nch; ++ch)
            dst[x * nch + ch] = (float)(acc[x * nch + ch] / wsum[x]);
}

/* Smooth values of the part of particle i (level l) that lies in box [lo, hi) (z, y, x pixels). */
static int smooth_cell_part(const aprnet_cell_table *parts, const aprnet_cell_table *tree,
                            const float *values, int64_t nch, int l, int64_t i, const int64_t lo[3],
                            const int64_t hi[3], const int64_t *region, float *out, cand_buf *buf,
                            double *acc, double *wsum) {
    const int sh = parts->level_max - l;
    const int64_t ry = region[3] - region[2], rx = region[5] - region[4];
    if (sh == 0) { /* pixel particle: only its own centre is within reach */
        float *dst = out + (((lo[0] - region[0]) * ry + (lo[1] - region[2])) * rx + (lo[2] - region[4])) * nch;
        memcpy(dst, values + i * nch, (size_t)nch * sizeof(float));
        return 0;
    }
    seg_query q;
    for (int a = 0; a < 3; ++a) {
        q.lo[a] = (double)lo[a] + 0.5;
        q.hi[a] = (double)hi[a] - 0.5;
    }
    q.reach = (double)((int64_t)1 << sh);
    buf->size = 0;
    const int64_t root[3] = {0, 0, 0};
    collect(parts, tree, 0, root, &q, buf);
    if (buf->failed) return 1;
    for (int64_t z = lo[0]; z < hi[0]; ++z)
        for (int64_t y = lo[1]; y < hi[1]; ++y) {
            float *dst = out + (((z - region[0]) * ry + (y - region[2])) * rx + (lo[2] - region[4])) * nch;
            blend_segment(buf, values, nch, (double)z + 0.5, (double)y + 0.5, lo[2], hi[2], q.reach,
                          acc, wsum, dst);
        }
    return 0;
}

/* Work is split into slabs of SLAB x SLAB rows (z, y) aligned to absolute
 * coordinates; each slab is filled by one thread, so a cell's candidates are
 * collected once per slab it overlaps instead of once per row. */
#define SLAB 16

int aprnet_reconstruct_smooth(const aprnet_cell_table *parts, const aprnet_cell_table *tree,
                              const float *values, int64_t nch, const int64_t *region, float *out,
                              const int32_t *cancel) {
    if (!ct_table_ok(parts) || !ct_table_ok(tree) || !ct_region_ok(parts->shape, region) || nch < 1 || !out ||
        (parts->n > 0 && !values))
        return APRNET_ERR_ARG;
    if (tree->level_max != parts->level_max || tree->ndim != parts->ndim ||
        tree->shape[0] != parts->shape[0] || tree->shape[1] != parts->shape[1] ||
        tree->shape[2] != parts->shape[2])
        return APRNET_ERR_ARG;
    const int64_t x0 = region[4], x1 = region[5], rx = x1 - x0;
    const int64_t bz0 = region[0] / SLAB, bz1 = (region[1] + SLAB - 1) / SLAB;
    const int64_t by0 = region[2] / SLAB, by1 = (region[3] + SLAB - 1) / SLAB;
    const int64_t nby = by1 - by0, nslabs = (bz1 - bz0) * nby;
    const int lmax = parts->level_max;
    int stop = 0, nomem = 0;
    if (rx == 0) return APRNET_OK;

    #pragma omp parallel if (nslabs > 1)
    {
        cand_buf buf = {NULL, 0, 0, 0};
        double *acc = malloc((size_t)(rx * nch) * sizeof(double));
        double *wsum = malloc((size_t)rx * sizeof(double));
        if (!acc || !wsum) {
            #pragma omp atomic write
            nomem = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < nslabs; ++b) {
            if (stop || nomem) continue;
            if (ct_cancelled(cancel)) {
                #pragma omp atomic write
                stop = 1;
                continue;
            }
            int64_t zs = (bz0 + b / nby) * SLAB, ze = zs + SLAB;
            int64_t ys = (by0 + b % nby) * SLAB, ye = ys + SLAB;
            if (zs < region[0]) zs = region[0];
            if (ze > region[1]) ze = region[1];
            if (ys < region[2]) ys = region[2];
            if (ye > region[3]) ye = region[3];
            int failed = 0;
            for (int l = 0; l <= lmax && !failed; ++l) {
                if (parts->level_offsets[l] == parts->level_offsets[l + 1]) continue;
                const int sh = lmax - l;
                for (int64_t zl = zs >> sh; zl <= (ze - 1) >> sh && !failed; ++zl)
                    for (int64_t yl = ys >> sh; yl <= (ye - 1) >> sh && !failed; ++yl) {
                        int64_t a, e;
                        ct_row_range(parts, l, zl, yl, &a, &e);
                        for (int64_t i = ct_lower_bound_x(parts, a, e, x0 >> sh); i < e; ++i) {
                            const int64_t cx = ct_coord(parts, i, 2);
                            int64_t lo[3] = {zl << sh, yl << sh, cx << sh};
                            int64_t hi[3] = {(zl + 1) << sh, (yl + 1) << sh, (cx + 1) << sh};
                            if (lo[2] >= x1) break;
                            if (lo[0] < zs) lo[0] = zs;
                            if (hi[0] > ze) hi[0] = ze;
                            if (lo[1] < ys) lo[1] = ys;
                            if (hi[1] > ye) hi[1] = ye;
                            if (lo[2] < x0) lo[2] = x0;
                            if (hi[2] > x1) hi[2] = x1;
                            if (smooth_cell_part(parts, tree, values, nch, l, i, lo, hi, region, out,
                                                 &buf, acc, wsum)) {
                                failed = 1;
                                break;
                            }
                        }
                    }
            }
            if (failed) {
                #pragma omp atomic write
                nomem = 1;
            }
        }
        free(buf.items);
        free(acc);
        free(wsum);
    }
    if (nomem) return APRNET_ERR_NOMEM;
    return stop ? APRNET_ERR_CANCELLED : APRNET_OK;
}
