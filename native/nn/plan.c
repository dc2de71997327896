/* nn/plan.c -- index plans of the APR layers for a whole batch.
 *
 * aprnet_nn_plan_build validates the structures of a batch and builds, for
 * each structure, one lookup map per level (coarse to fine). A map cell holds
 * the local index of the particle covering it (a particle of this level or an
 * inherited coarser one) or n + t for interior tree node t: the cells of a
 * level that no particle of this or a coarser level covers, numbered in
 * row-major order (the order of APRStructure.tree). From the maps:
 *   - aprnet_nn_plan_conv: convolution rulebooks in batch value indices
 *     [all particles | all tree nodes | zero row], rows ordered by level
 *     kernel, then structure, then particle;
 *   - aprnet_nn_plan_tree: the children of every tree node, finest level first;
 *   - aprnet_nn_plan_pool: the max-pooling maps and the pooled structures.
 * Work is split into fixed chunks (independent of the thread count) and every
 * chunk writes disjoint outputs, so results do not depend on the number of
 * OpenMP threads.
 */
#include <stdlib.h>
#include <string.h>

#include "aprnet.h"

#define NN_PLAN_CHUNK 2048         /* particles or tree nodes per work chunk */
#define NN_PLAN_CELL_CHUNKS 64     /* chunks of a level map when one structure is built in parallel */
#define NN_PLAN_PAR_CELLS 262144   /* level maps smaller than this are scanned serially */
#define NN_PLAN_MAX_LEVEL 30
#define NN_PLAN_PAR_WORK 65536     /* output entries below which a step stays serial */

struct aprnet_nn_plan {
    int ndim;
    int64_t B;
    int LM;                /* largest level_max of the batch */
    int64_t n_total, n_tree_total;
    int32_t *lmax;         /* (B,) */
    int64_t *shape;        /* (B, 3) */
    int64_t *pstart;       /* (B + 1,) global start of each structure's particles */
    int64_t *tstart;       /* (B + 1,) global start of each structure's tree nodes */
    int64_t *loff;         /* (B, LM + 2) local level offsets of the particles */
    int64_t *toff;         /* (B, LM + 2) local level offsets of the tree nodes */
    int64_t *mstart;       /* (B, LM + 2) start of each level's map in maps[b] */
    int32_t **maps;        /* (B,) all level maps of a structure, one block */
    int64_t **tcell;       /* (B,) cell (row-major index at its level) of each tree node */
    int32_t *coords;       /* (n_total, ndim) copy of the particle coordinates */
};

typedef struct {
    int64_t b, lo, hi, dst;
} nn_chunk;

static void nn_grid(const int64_t *shape, int level_max, int level, int64_t *g) {
    int s = level_max - level;
    for (int a = 0; a < 3; a++) g[a] = (shape[a] + ((int64_t)1 << s) - 1) >> s;
}

static void nn_c3(const int32_t *coords, int ndim, int64_t i, int64_t *c) {
    const int32_t *p = coords + i * ndim;
    if (ndim == 2) {
        c[0] = 0; c[1] = p[0]; c[2] = p[1];
    } else {
        c[0] = p[0]; c[1] = p[1]; c[2] = p[2];
    }
}

void aprnet_nn_plan_free(aprnet_nn_plan *plan) {
    if (plan == NULL) return;
    if (plan->maps)
        for (int64_t b = 0; b < plan->B; b++) free(plan->maps[b]);
    if (plan->tcell)
        for (int64_t b = 0; b < plan->B; b++) free(plan->tcell[b]);
    free(plan->maps); free(plan->tcell); free(plan->lmax); free(plan->shape); free(plan->pstart);
    free(plan->tstart); free(plan->loff); free(plan->toff); free(plan->mstart); free(plan->coords);
    free(plan);
}

/* Level maps of structure b. par: scan the maps with all threads (used when
 * the batch holds one structure). */
static int nn_build_one(aprnet_nn_plan *P, int64_t b, const uint8_t *levels, int par) {
    const int ndim = P->ndim, lm = P->lmax[b], W = P->LM + 2;
    const int64_t n = P->pstart[b + 1] - P->pstart[b];
    const int64_t *shape = P->shape + 3 * b;
    const uint8_t *lv = levels + P->pstart[b];
    const int32_t *cs = P->coords + P->pstart[b] * ndim;
    int64_t *loff = P->loff + b * W, *toff = P->toff + b * W, *ms = P->mstart + b * W;

    /* level offsets (levels sorted, within 0..lm) */
    for (int l = 0; l < W; l++) loff[l] = 0;
    for (int64_t i = 0; i < n; i++) {
        if (lv[i] > lm || (i > 0 && lv[i] < lv[i - 1])) return APRNET_ERR_ARG;
        loff[lv[i] + 1]++;
    }
    for (int l = 0; l < W - 1; l++) loff[l + 1] += loff[l];
    ms[0] = 0;
    for (int l = 0; l <= lm; l++) {
        int64_t g[3];
        nn_grid(shape, lm, l, g);
        if (g[0] * g[1] >= INT32_MAX || g[0] * g[1] * g[2] >= INT32_MAX) return APRNET_ERR_ARG;
        ms[l + 1] = ms[l] + g[0] * g[1] * g[2];
        if (ms[l + 1] >= INT32_MAX) return APRNET_ERR_ARG;  /* too large for 32-bit indices */
    }
    for (int l = lm + 1; l < W - 1; l++) ms[l + 1] = ms[l];
    if (n + ms[lm + 1] >= INT32_MAX) return APRNET_ERR_ARG;
    int32_t *maps = (int32_t *)malloc((size_t)(ms[lm + 1] > 0 ? ms[lm + 1] : 1) * sizeof(int32_t));
    if (maps == NULL) return APRNET_ERR_NOMEM;
    P->maps[b] = maps;
    int64_t cap = 0, nt = 0;
    int64_t *tcell = NULL;
    toff[0] = 0;
    int64_t pg[3] = {0, 0, 0};
    for (int l = 0; l <= lm; l++) {
        int64_t g[3];
        nn_grid(shape, lm, l, g);
        const int64_t ncell = g[0] * g[1] * g[2];
        int32_t *cur = maps + ms[l];
        const int32_t *prev = l > 0 ? maps + ms[l - 1] : NULL;
        const int lpar = par && ncell >= NN_PLAN_PAR_CELLS;
        /* inherit coarser particles (tree nodes of the parent level stay -1) */
        #pragma omp parallel for schedule(static) if(lpar)
        for (int64_t zy = 0; zy < g[0] * g[1]; zy++) {
            int32_t *row = cur + zy * g[2];
            if (prev == NULL) {
                for (int64_t x = 0; x < g[2]; x++) row[x] = -1;
                continue;
            }
            int64_t z = zy / g[1], y = zy % g[1];
            const int32_t *prow = prev + ((z >> 1) * pg[1] + (y >> 1)) * pg[2];
            for (int64_t x = 0; x < g[2]; x++) {
                int32_t pv = prow[x >> 1];
                row[x] = pv < n ? pv : -1;
            }
        }
        /* this level's particles: in the grid, strictly increasing, on uncovered cells */
        int bad = 0;
        const int64_t plo = loff[l], phi = loff[l + 1];
        #pragma omp parallel for schedule(static) reduction(|:bad) if(lpar)
        for (int64_t p = plo; p < phi; p++) {
            int64_t c[3];
            nn_c3(cs, ndim, p, c);
            if (c[0] < 0 || c[0] >= g[0] || c[1] < 0 || c[1] >= g[1] || c[2] < 0 || c[2] >= g[2]) {
                bad |= 2;
                continue;
            }
            int64_t key = (c[0] * g[1] + c[1]) * g[2] + c[2];
            if (p > plo) {
                int64_t q[3];
                nn_c3(cs, ndim, p - 1, q);
                int64_t pk = (q[0] * g[1] + q[1]) * g[2] + q[2];
                if (pk >= key) { bad |= 1; continue; }
            }
            if (cur[key] != -1) { bad |= 1; continue; }
            cur[key] = (int32_t)p;
        }
        if (bad) {
            free(tcell);
            return (bad & 2) ? APRNET_ERR_BOUNDS : APRNET_ERR_ARG;
        }
        /* uncovered cells: tree nodes, numbered row-major (none allowed at the finest level) */
        int64_t cnt[NN_PLAN_CELL_CHUNKS + 1];
        const int nch = lpar ? NN_PLAN_CELL_CHUNKS : 1;
        #pragma omp parallel for schedule(static) if(lpar)
        for (int k = 0; k < nch; k++) {
            int64_t a = ncell * k / nch, e = ncell * (k + 1) / nch, m = 0;
            for (int64_t i = a; i < e; i++) m += cur[i] == -1;
            cnt[k + 1] = m;
        }
        cnt[0] = 0;
        for (int k = 0; k < nch; k++) cnt[k + 1] += cnt[k];
        if (cnt[nch] > 0) {
            if (l == lm) {
                free(tcell);
                return APRNET_ERR_ARG; /* a pixel covered by no particle */
            }
            if (nt + cnt[nch] > cap) {
                int64_t nc = 2 * cap > nt + cnt[nch] ? 2 * cap : nt + cnt[nch];
                int64_t *t2 = (int64_t *)realloc(tcell, (size_t)nc * sizeof(int64_t));
                if (t2 == NULL) { free(tcell); return APRNET_ERR_NOMEM; }
                tcell = t2;
                cap = nc;
            }
            #pragma omp parallel for schedule(static) if(lpar)
            for (int k = 0; k < nch; k++) {
                int64_t a = ncell * k / nch, e = ncell * (k + 1) / nch, t = nt + cnt[k];
                for (int64_t i = a; i < e; i++)
                    if (cur[i] == -1) {
                        cur[i] = (int32_t)(n + t);
                        tcell[t++] = i;
                    }
            }
        }
        nt += cnt[nch];
        toff[l + 1] = nt;
        pg[0] = g[0]; pg[1] = g[1]; pg[2] = g[2];
    }
    for (int l = lm + 1; l < W - 1; l++) toff[l + 1] = nt;
    P->tcell[b] = tcell;
    return APRNET_OK;
}

int aprnet_nn_plan_build(int ndim, int64_t n_structures, const int64_t *shapes, const int32_t *level_max,
                         const int64_t *particle_starts, const uint8_t *levels, const int32_t *coords,
                         int max_level, int64_t *level_offsets, int64_t *tree_counts, aprnet_nn_plan **out) {
    if (out == NULL) return APRNET_ERR_ARG;
    *out = NULL;
    if ((ndim != 2 && ndim != 3) || n_structures < 1 || max_level < 0 || max_level > NN_PLAN_MAX_LEVEL ||
        shapes == NULL || level_max == NULL || particle_starts == NULL || level_offsets == NULL ||
        tree_counts == NULL || particle_starts[0] != 0)
        return APRNET_ERR_ARG;
    const int64_t B = n_structures;
    int top = 0;
    for (int64_t b = 0; b < B; b++) {
        if (level_max[b] < 0 || level_max[b] > max_level) return APRNET_ERR_ARG;
        if (level_max[b] > top) top = level_max[b];
        if (particle_starts[b + 1] < particle_starts[b]) return APRNET_ERR_ARG;
        for (int a = 0; a < 3; a++)
            if (shapes[3 * b + a] < 1 || shapes[3 * b + a] >= INT32_MAX) return APRNET_ERR_ARG;
        if (ndim == 2 && shapes[3 * b] != 1) return APRNET_ERR_ARG;
    }
    if (top != max_level) return APRNET_ERR_ARG;
    const int64_t n_total = particle_starts[B];
    if (n_total > 0 && (levels == NULL || coords == NULL)) return APRNET_ERR_ARG;
    const int W = max_level + 2;

    aprnet_nn_plan *P = (aprnet_nn_plan *)calloc(1, sizeof(aprnet_nn_plan));
    if (P == NULL) return APRNET_ERR_NOMEM;
    P->ndim = ndim; P->B = B; P->LM = max_level; P->n_total = n_total;
    P->lmax = (int32_t *)malloc((size_t)B * sizeof(int32_t));
    P->shape = (int64_t *)malloc((size_t)B * 3 * sizeof(int64_t));
    P->pstart = (int64_t *)malloc((size_t)(B + 1) * sizeof(int64_t));
    P->tstart = (int64_t *)malloc((size_t)(B + 1) * sizeof(int64_t));
    P->loff = (int64_t *)malloc((size_t)B * W * sizeof(int64_t));
    P->toff = (int64_t *)malloc((size_t)B * W * sizeof(int64_t));
    P->mstart = (int64_t *)malloc((size_t)B * W * sizeof(int64_t));
    P->maps = (int32_t **)calloc((size_t)B, sizeof(int32_t *));
    P->tcell = (int64_t **)calloc((size_t)B, sizeof(int64_t *));
    P->coords = (int32_t *)malloc((size_t)(n_total > 0 ? n_total : 1) * ndim * sizeof(int32_t));
    if (!P->lmax || !P->shape || !P->pstart || !P->tstart || !P->loff || !P->toff || !P->mstart || !P->maps ||
        !P->tcell || !P->coords) {
        aprnet_nn_plan_free(P);
        return APRNET_ERR_NOMEM;
    }
    memcpy(P->lmax, level_max, (size_t)B * sizeof(int32_t));
    memcpy(P->shape, shapes, (size_t)B * 3 * sizeof(int64_t));
    memcpy(P->pstart, particle_starts, (size_t)(B + 1) * sizeof(int64_t));
    if (n_total > 0) memcpy(P->coords, coords, (size_t)n_total * ndim * sizeof(int32_t));

    int *status = (int *)malloc((size_t)B * sizeof(int));
    if (status == NULL) { aprnet_nn_plan_free(P); return APRNET_ERR_NOMEM; }
    const int one = B == 1;
    #pragma omp parallel for schedule(dynamic, 1) if(B > 1)
    for (int64_t b = 0; b < B; b++) status[b] = nn_build_one(P, b, levels, one);
    int st = APRNET_OK;
    for (int64_t b = 0; b < B && st == APRNET_OK; b++) st = status[b];  /* first failure, in batch order */
    free(status);
    if (st != APRNET_OK) { aprnet_nn_plan_free(P); return st; }

    P->tstart[0] = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t *toff = P->toff + b * W;
        P->tstart[b + 1] = P->tstart[b] + toff[W - 1];
        for (int l = 0; l < W; l++) level_offsets[b * W + l] = P->loff[b * W + l];
        for (int l = 0; l <= max_level; l++) tree_counts[b * (max_level + 1) + l] = toff[l + 1] - toff[l];
    }
    P->n_tree_total = P->tstart[B];
    if (n_total + P->n_tree_total >= INT32_MAX) { aprnet_nn_plan_free(P); return APRNET_ERR_ARG; }
    *out = P;
    return APRNET_OK;
}

/* batch value index of local value v of structure b (zero = n + nt) */
static inline int64_t nn_global(const aprnet_nn_plan *P, int64_t b, int64_t n, int64_t v) {
    if (v < n) return P->pstart[b] + v;
    int64_t t = v - n;
    if (t >= P->tstart[b + 1] - P->tstart[b]) return P->n_total + P->n_tree_total;
    return P->n_total + P->tstart[b] + t;
}

/* Split [lo, hi) ranges into chunks; returns the chunk count (chunks may be NULL to count). */
static int64_t nn_add_chunks(nn_chunk *chunks, int64_t m, int64_t b, int64_t lo, int64_t hi, int64_t dst) {
    for (int64_t a = lo; a < hi; a += NN_PLAN_CHUNK, m++)
        if (chunks) {
            chunks[m].b = b; chunks[m].lo = a; chunks[m].hi = a + NN_PLAN_CHUNK < hi ? a + NN_PLAN_CHUNK : hi;
            chunks[m].dst = dst + (a - lo);
        }
    return m;
}

static void nn_kernel_range(const aprnet_nn_plan *P, int64_t b, int g, int L, int64_t *lo, int64_t *hi) {
    const int W = P->LM + 2;
    int finest = P->lmax[b] - g;
    if (finest < 0) { *lo = *hi = 0; return; }
    int coarsest = g == L - 1 ? 0 : finest;
    *lo = P->loff[b * W + coarsest];
    *hi = P->loff[b * W + finest + 1];
}

int aprnet_nn_plan_conv(const aprnet_nn_plan *plan, int kernel_size, int n_level_kernels, int32_t *rulebook,
                        int64_t *rows, int64_t *group_counts) {
    const aprnet_nn_plan *P = plan;
    if (P == NULL || kernel_size < 1 || kernel_size % 2 == 0 || kernel_size > 99 || n_level_kernels < 1 ||
        group_counts == NULL || (P->n_total > 0 && rows == NULL))
        return APRNET_ERR_ARG;
    const int ndim = P->ndim, L = n_level_kernels, W = P->LM + 2;
    const int r = kernel_size / 2, rz = ndim == 3 ? r : 0;
    const int64_t K = (int64_t)(2 * rz + 1) * kernel_size * kernel_size;
    const int64_t zero = P->n_total + P->n_tree_total;
    int64_t m = 0, dst = 0;
    for (int g = 0; g < L; g++) {
        group_counts[g] = 0;
        for (int64_t b = 0; b < P->B; b++) {
            int64_t lo, hi;
            nn_kernel_range(P, b, g, L, &lo, &hi);
            m = nn_add_chunks(NULL, m, b, lo, hi, dst);
            dst += hi - lo;
            group_counts[g] += hi - lo;
        }
    }
    if (dst != P->n_total) return APRNET_ERR_INTERNAL;
    nn_chunk *chunks = (nn_chunk *)malloc((size_t)(m > 0 ? m : 1) * sizeof(nn_chunk));
    if (chunks == NULL) return APRNET_ERR_NOMEM;
    m = 0; dst = 0;
    for (int g = 0; g < L; g++)
        for (int64_t b = 0; b < P->B; b++) {
            int64_t lo, hi;
            nn_kernel_range(P, b, g, L, &lo, &hi);
            m = nn_add_chunks(chunks, m, b, lo, hi, dst);
            dst += hi - lo;
        }
    #pragma omp parallel for schedule(dynamic, 1) if(P->n_total * K > NN_PLAN_PAR_WORK)
    for (int64_t ci = 0; ci < m; ci++) {
        const nn_chunk ck = chunks[ci];
        const int64_t b = ck.b, n = P->pstart[b + 1] - P->pstart[b];
        const int lm = P->lmax[b];
        const int64_t *loff = P->loff + b * W;
        const int32_t *cs = P->coords + P->pstart[b] * ndim;
        const int32_t pbase = (int32_t)P->pstart[b];                 /* local particle v -> pbase + v */
        const int32_t tbase = (int32_t)(P->n_total + P->tstart[b] - n);  /* local tree value v -> tbase + v */
        const int32_t zero32 = (int32_t)zero, n32 = (int32_t)n;
        int l = 0;
        while (loff[l + 1] <= ck.lo) l++;
        int64_t g[3] = {0, 0, 0};
        const int32_t *map = NULL;
        int lcur = -1;
        for (int64_t p = ck.lo; p < ck.hi; p++) {
            while (loff[l + 1] <= p) l++;
            if (l != lcur) {
                nn_grid(P->shape + 3 * b, lm, l, g);
                map = P->maps[b] + P->mstart[b * W + l];
                lcur = l;
            }
            int64_t c[3];
            nn_c3(cs, ndim, p, c);
            const int64_t row = ck.dst + (p - ck.lo);
            rows[row] = P->pstart[b] + p;
            if (rulebook == NULL) continue;  /* rows only */
            int32_t *out = rulebook + row * K;
            /* x range of the stencil inside the grid: dx in [xa, xb) */
            const int64_t xa = c[2] - r < 0 ? r - c[2] : 0;
            const int64_t xb = c[2] + r >= g[2] ? r + g[2] - c[2] : 2 * r + 1;
            for (int dz = -rz; dz <= rz; dz++) {
                const int64_t z = c[0] + dz;
                for (int dy = -r; dy <= r; dy++, out += 2 * r + 1) {
                    const int64_t y = c[1] + dy;
                    if (z < 0 || z >= g[0] || y < 0 || y >= g[1]) {
                        for (int j = 0; j < 2 * r + 1; j++) out[j] = zero32;
                        continue;
                    }
                    const int32_t *mrow = map + (z * g[1] + y) * g[2] + c[2] - r;
                    for (int64_t j = 0; j < xa; j++) out[j] = zero32;
                    for (int64_t j = xa; j < xb; j++) {
                        const int32_t v = mrow[j];  /* a particle (< n) or a tree node: both inside */
                        out[j] = v + (v < n32 ? pbase : tbase);
                    }
                    for (int64_t j = xb; j < 2 * r + 1; j++) out[j] = zero32;
                }
            }
        }
    }
    free(chunks);
    return APRNET_OK;
}

int aprnet_nn_plan_tree(const aprnet_nn_plan *plan, int64_t *rows, int64_t *children) {
    const aprnet_nn_plan *P = plan;
    if (P == NULL || (P->n_tree_total > 0 && (rows == NULL || children == NULL))) return APRNET_ERR_ARG;
    const int ndim = P->ndim, W = P->LM + 2, nchild = 1 << ndim;
    const int64_t zero = P->n_total + P->n_tree_total;
    int64_t m = 0, dst = 0;
    for (int pass = 0; pass < 2; pass++) {
        nn_chunk *chunks = NULL;
        if (pass == 1) {
            chunks = (nn_chunk *)malloc((size_t)(m > 0 ? m : 1) * sizeof(nn_chunk));
            if (chunks == NULL) return APRNET_ERR_NOMEM;
        }
        m = 0; dst = 0;
        for (int l = P->LM - 1; l >= 0; l--)
            for (int64_t b = 0; b < P->B; b++) {
                const int64_t *toff = P->toff + b * W;
                m = nn_add_chunks(chunks, m, b, toff[l], toff[l + 1], dst);
                dst += toff[l + 1] - toff[l];
            }
        if (pass == 0) {
            if (dst != P->n_tree_total) return APRNET_ERR_INTERNAL;
            continue;
        }
        #pragma omp parallel for schedule(dynamic, 1) if(P->n_tree_total * nchild > NN_PLAN_PAR_WORK)
        for (int64_t ci = 0; ci < m; ci++) {
            const nn_chunk ck = chunks[ci];
            const int64_t b = ck.b, n = P->pstart[b + 1] - P->pstart[b];
            const int lm = P->lmax[b];
            const int64_t *toff = P->toff + b * W;
            int l = 0;
            while (toff[l + 1] <= ck.lo) l++;  /* a chunk lies in one level */
            int64_t g[3], gc[3];
            nn_grid(P->shape + 3 * b, lm, l, g);
            nn_grid(P->shape + 3 * b, lm, l + 1, gc);
            const int32_t *cmap = P->maps[b] + P->mstart[b * W + l + 1];
            for (int64_t t = ck.lo; t < ck.hi; t++) {
                const int64_t row = ck.dst + (t - ck.lo);
                const int64_t cell = P->tcell[b][t];
                const int64_t x = cell % g[2], y = (cell / g[2]) % g[1], z = cell / (g[1] * g[2]);
                rows[row] = P->n_total + P->tstart[b] + t;
                for (int j = 0; j < nchild; j++) {
                    const int64_t cz = ndim == 3 ? 2 * z + ((j >> 2) & 1) : 0;
                    const int64_t cy = 2 * y + ((j >> 1) & 1), cx = 2 * x + (j & 1);
                    int64_t v = zero;
                    if (cz < gc[0] && cy < gc[1] && cx < gc[2]) v = nn_global(P, b, n, cmap[(cz * gc[1] + cy) * gc[2] + cx]);
                    children[row * nchild + j] = v;
                }
            }
        }
        free(chunks);
    }
    return APRNET_OK;
}

int aprnet_nn_plan_pool(const aprnet_nn_plan *plan, int32_t *out_coords, uint8_t *out_levels, int64_t *pass_src,
                        int64_t *pass_dst, int64_t *pool_dst, int64_t *pool_children) {
    const aprnet_nn_plan *P = plan;
    if (P == NULL) return APRNET_ERR_ARG;
    const int ndim = P->ndim, W = P->LM + 2, nchild = 1 << ndim;
    for (int64_t b = 0; b < P->B; b++)
        if (P->lmax[b] < 1) return APRNET_ERR_ARG;
    int64_t *starts = (int64_t *)malloc((size_t)(3 * (P->B + 1)) * sizeof(int64_t));
    if (starts == NULL) return APRNET_ERR_NOMEM;
    int64_t *ost = starts, *pst = starts + P->B + 1, *qst = starts + 2 * (P->B + 1);
    ost[0] = pst[0] = qst[0] = 0;
    for (int64_t b = 0; b < P->B; b++) {
        const int lm = P->lmax[b];
        const int64_t keep = P->loff[b * W + lm], pooled = P->toff[b * W + lm] - P->toff[b * W + lm - 1];
        pst[b + 1] = pst[b] + keep;
        qst[b + 1] = qst[b] + pooled;
        ost[b + 1] = ost[b] + keep + pooled;
    }
    if ((ost[P->B] > 0 && (out_coords == NULL || out_levels == NULL)) ||
        (pst[P->B] > 0 && (pass_src == NULL || pass_dst == NULL)) ||
        (qst[P->B] > 0 && (pool_dst == NULL || pool_children == NULL))) {
        free(starts);
        return APRNET_ERR_ARG;
    }
    #pragma omp parallel for schedule(dynamic, 1) if(P->n_total > NN_PLAN_PAR_WORK / 4)
    for (int64_t b = 0; b < P->B; b++) {
        const int lm = P->lmax[b];
        const int64_t n = P->pstart[b + 1] - P->pstart[b];
        const int64_t *loff = P->loff + b * W;
        const int32_t *cs = P->coords + P->pstart[b] * ndim;
        int32_t *oc = out_coords + ost[b] * ndim;
        uint8_t *ol = out_levels + ost[b];
        int64_t *ps = pass_src + pst[b], *pd = pass_dst + pst[b];
        int64_t *qd = pool_dst + qst[b], *qc = pool_children + qst[b] * nchild;
        /* levels below lm - 1 keep their positions */
        int l = 0;
        for (int64_t p = 0; p < loff[lm - 1]; p++) {
            while (loff[l + 1] <= p) l++;
            for (int a = 0; a < ndim; a++) oc[p * ndim + a] = cs[p * ndim + a];
            ol[p] = (uint8_t)l;
            ps[p] = P->pstart[b] + p;
            pd[p] = ost[b] + p;
        }
        /* level lm - 1: its particles and the parents of level lm, merged row-major */
        int64_t g[3], gc[3];
        nn_grid(P->shape + 3 * b, lm, lm - 1, g);
        nn_grid(P->shape + 3 * b, lm, lm, gc);
        const int32_t *map = P->maps[b] + P->mstart[b * W + lm - 1];
        const int32_t *cmap = P->maps[b] + P->mstart[b * W + lm];
        int64_t pos = loff[lm - 1], k = loff[lm - 1], q = 0;
        for (int64_t z = 0; z < g[0]; z++)
            for (int64_t y = 0; y < g[1]; y++)
                for (int64_t x = 0; x < g[2]; x++) {
                    const int64_t v = map[(z * g[1] + y) * g[2] + x];
                    if (v < loff[lm - 1]) continue;  /* covered by a coarser particle */
                    if (v < n) {
                        ps[k] = P->pstart[b] + v;
                        pd[k] = ost[b] + pos;
                        k++;
                    } else {
                        qd[q] = ost[b] + pos;
                        int64_t first = -1;
                        for (int j = 0; j < nchild; j++) {
                            const int64_t cz = ndim == 3 ? 2 * z + ((j >> 2) & 1) : 0;
                            const int64_t cy = 2 * y + ((j >> 1) & 1), cx = 2 * x + (j & 1);
                            int64_t c = first;  /* a child outside the image repeats child 0 */
                            if (cz < gc[0] && cy < gc[1] && cx < gc[2])
                                c = P->pstart[b] + cmap[(cz * gc[1] + cy) * gc[2] + cx];
                            if (j == 0) first = c;
                            qc[q * nchild + j] = c;
                        }
                        q++;
                    }
                    int32_t cc[3] = {(int32_t)z, (int32_t)y, (int32_t)x};
                    for (int a = 0; a < ndim; a++) oc[pos * ndim + a] = cc[3 - ndim + a];
                    ol[pos] = (uint8_t)(lm - 1);
                    pos++;
                }
    }
    free(starts);
    return APRNET_OK;
}

/* Stencil values of the given particles straight from the level maps (the
 * rulebook of aprnet_nn_plan_conv without storing it): out[i, o, :] =
 * values[index of offset o around particle rows[i]] for the batch value table
 * values (n_values, cin), n_values = n_total + n_tree_total + 1. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define NN_PLAN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NN_PLAN_CLONES
#endif

#define NN_PLAN_GATHER(SUF, T)                                                                              \
    /* the stencil values of batch particle q into o (K * cin values); 1 if q is out of range */            \
    NN_PLAN_CLONES static int nn_gather_row_##SUF(const aprnet_nn_plan *P, int r, int rz, int64_t q,       \
                                                  const T *values, int64_t cin, T *o) {                     \
        if (q < 0 || q >= P->n_total) return 1;                                                             \
        const int ndim = P->ndim, W = P->LM + 2;                                                            \
        const int64_t w = 2 * r + 1;                                                                        \
        const T *zrow = values + (P->n_total + P->n_tree_total) * cin;                                      \
        int64_t lo = 0, hi = P->B; /* structure: last b with pstart[b] <= q */                             \
        while (hi - lo > 1) {                                                                               \
            int64_t mid = (lo + hi) / 2;                                                                    \
            if (P->pstart[mid] <= q) lo = mid; else hi = mid;                                               \
        }                                                                                                   \
        const int64_t b = lo, p = q - P->pstart[b], n = P->pstart[b + 1] - P->pstart[b];                    \
        const int64_t *loff = P->loff + b * W;                                                              \
        int l = 0;                                                                                          \
        while (loff[l + 1] <= p) l++;                                                                       \
        int64_t g[3], c[3];                                                                                 \
        nn_grid(P->shape + 3 * b, P->lmax[b], l, g);                                                        \
        nn_c3(P->coords + P->pstart[b] * ndim, ndim, p, c);                                                 \
        const int32_t *map = P->maps[b] + P->mstart[b * W + l];                                             \
        const int32_t n32 = (int32_t)n, pb = (int32_t)P->pstart[b];                                         \
        const int32_t tb = (int32_t)(P->n_total + P->tstart[b] - n);                                        \
        const int64_t xa = c[2] - r < 0 ? r - c[2] : 0;                                                     \
        const int64_t xb = c[2] + r >= g[2] ? r + g[2] - c[2] : w;                                          \
        for (int dz = -rz; dz <= rz; dz++) {                                                                \
            const int64_t z = c[0] + dz;                                                                    \
            for (int dy = -r; dy <= r; dy++, o += w * cin) {                                                \
                const int64_t y = c[1] + dy;                                                                \
                if (z < 0 || z >= g[0] || y < 0 || y >= g[1]) {                                             \
                    for (int64_t j = 0; j < w * cin; j++) o[j] = zrow[j % cin];                             \
                    continue;                                                                               \
                }                                                                                           \
                const int32_t *mrow = map + (z * g[1] + y) * g[2] + c[2] - r;                               \
                if (cin == 1) { /* one channel: a plain (vectorisable) gather */                           \
                    for (int64_t j = 0; j < xa; j++) o[j] = zrow[0];                                        \
                    for (int64_t j = xa; j < xb; j++) {                                                     \
                        const int32_t v = mrow[j];                                                          \
                        o[j] = values[v + (v < n32 ? pb : tb)];                                             \
                    }                                                                                       \
                    for (int64_t j = xb; j < w; j++) o[j] = zrow[0];                                        \
                    continue;                                                                               \
                }                                                                                           \
                for (int64_t j = 0; j < w; j++) {                                                           \
                    const T *src = zrow;                                                                    \
                    if (j >= xa && j < xb) {                                                                \
                        const int32_t v = mrow[j];                                                          \
                        src = values + (int64_t)(v + (v < n32 ? pb : tb)) * cin;                            \
                    }                                                                                       \
                    for (int64_t cc = 0; cc < cin; cc++) o[j * cin + cc] = src[cc];                         \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
        return 0;                                                                                           \
    }                                                                                                       \
                                                                                                            \
    int aprnet_nn_plan_gather_##SUF(const aprnet_nn_plan *plan, int kernel_size, const int64_t *rows,         \
                                    int64_t n_rows, const T *values, int64_t n_values, int64_t cin, T *out) { \
        const aprnet_nn_plan *P = plan;                                                                     \
        if (P == NULL || kernel_size < 1 || kernel_size % 2 == 0 || kernel_size > 99 || n_rows < 0 ||       \
            cin < 1 || n_values != P->n_total + P->n_tree_total + 1)                                        \
            return APRNET_ERR_ARG;                                                                          \
        if (n_rows == 0) return APRNET_OK;                                                                  \
        if (rows == NULL || values == NULL || out == NULL) return APRNET_ERR_ARG;                           \
        const int r = kernel_size / 2, rz = P->ndim == 3 ? r : 0;                                           \
        const int64_t K = (int64_t)(2 * rz + 1) * kernel_size * kernel_size;                                \
        int bad = 0;                                                                                        \
        _Pragma("omp parallel for schedule(static) reduction(|:bad) if(n_rows * K * cin > NN_PLAN_PAR_WORK)") \
        for (int64_t i = 0; i < n_rows; i++)                                                                \
            bad |= nn_gather_row_##SUF(P, r, rz, rows[i], values, cin, out + i * K * cin);                  \
        return bad ? APRNET_ERR_BOUNDS : APRNET_OK;                                                         \
    }

NN_PLAN_GATHER(f32, float)
NN_PLAN_GATHER(f64, double)
