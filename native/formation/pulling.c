/* pulling.c -- LibAPR's pulling scheme on a dense particle-cell tree, written
 * as race-free "gather" passes (each cell decides its own new state from its
 * neighbourhood), so the result is independent of the number of threads.
 *
 * Tree levels l_min .. lps = level_max - 1 are stored one after the other,
 * level l with grid ceil(n / 2^(level_max - l)) per axis. The input is the
 * required level L on the level lps grid (the half-resolution grid).
 *
 * After the scheme every tree cell holds one code:
 *   FM_PART  the cell is a particle at its own level,
 *   FM_UP    its children (level l + 1) are particles -- only left at lps,
 *            where the children are pixels,
 *   0        neither.
 */
#include <stdlib.h>
#include <string.h>

#include "aprnet.h"
#include "fm_common.h"

enum {
    ST_EMPTY = 0,
    ST_SEED = 1,
    ST_BOUNDARY = 2,
    ST_FILLER = 3,
    ST_UPSEED = 4,
    ST_ASCENDANT = 8,
    ST_PROPAGATE = 15,
    ST_ASC_NEIGHBOUR = 16
};

#define FM_PART 1
#define FM_UP 2

static fm_dims level_dims(const int64_t shape[3], int level_max, int level) {
    int s = level_max - level;
    fm_dims d;
    d.nz = ((shape[0] - 1) >> s) + 1;
    d.ny = ((shape[1] - 1) >> s) + 1;
    d.nx = ((shape[2] - 1) >> s) + 1;
    return d;
}

static int64_t level_offset(const int64_t shape[3], int level_max, int level_min, int level) {
    int64_t off = 0;
    for (int l = level_min; l < level; ++l) off += fm_size(level_dims(shape, level_max, l));
    return off;
}

int64_t aprnet_pulling_tree_bytes(const int64_t shape[3], int level_max, int level_min) {
    if (level_max - 1 < level_min) return 0;
    return level_offset(shape, level_max, level_min, level_max);
}

/* the cells a dilation starts from: ascendants (PRED_ASC) or seeds and
 * propagate cells (PRED_SEED) */
enum { PRED_ASC, PRED_SEED };

static inline uint8_t pred(uint8_t v, int which) {
    return which == PRED_ASC ? v == ST_ASCENDANT : (v == ST_SEED || v == ST_PROPAGATE);
}

/* 1 where any cell of the clipped 3^d neighbourhood of a cell of the level
 * (codes t, dims d) satisfies the predicate. a and b are scratch of the level's
 * size; returns the one that holds the result. */
static const uint8_t *dilate(const uint8_t *t, int which, uint8_t *a, uint8_t *b, fm_dims d) {
    const int64_t nz = d.nz, ny = d.ny, nx = d.nx, plane = ny * nx;
    /* x: t -> a */
#pragma omp parallel for schedule(static) if (nz * plane >= FM_PAR_MIN)
    for (int64_t r = 0; r < nz * ny; ++r) {
        const uint8_t *restrict s = t + r * nx;
        uint8_t *restrict o = a + r * nx;
        if (nx == 1) {
            o[0] = pred(s[0], which);
            continue;
        }
        o[0] = pred(s[0], which) | pred(s[1], which);
        for (int64_t x = 1; x < nx - 1; ++x)
            o[x] = pred(s[x - 1], which) | pred(s[x], which) | pred(s[x + 1], which);
        o[nx - 1] = pred(s[nx - 2], which) | pred(s[nx - 1], which);
    }
    /* y: a -> b */
#pragma omp parallel for schedule(static) if (nz * plane >= FM_PAR_MIN)
    for (int64_t r = 0; r < nz * ny; ++r) {
        const int64_t z = r / ny, y = r % ny;
        const uint8_t *c = a + z * plane + y * nx;
        const uint8_t *u = y > 0 ? c - nx : c;
        const uint8_t *w = y + 1 < ny ? c + nx : c;
        uint8_t *restrict o = b + r * nx;
        for (int64_t x = 0; x < nx; ++x) o[x] = u[x] | c[x] | w[x];
    }
    if (nz == 1) return b;
    /* z: b -> a */
#pragma omp parallel for schedule(static) if (nz * plane >= FM_PAR_MIN)
    for (int64_t z = 0; z < nz; ++z) {
        const uint8_t *c = b + z * plane;
        const uint8_t *u = z > 0 ? c - plane : c;
        const uint8_t *w = z + 1 < nz ? c + plane : c;
        uint8_t *restrict o = a + z * plane;
        for (int64_t i = 0; i < plane; ++i) o[i] = u[i] | c[i] | w[i];
    }
    return a;
}

/* out[x] = p[x >> 1] for x < n: a parent row at child resolution */
static void expand_row(const uint8_t *restrict p, int64_t n, uint8_t *restrict out) {
    for (int64_t k = 0; k < n / 2; ++k) {
        out[2 * k] = p[k];
        out[2 * k + 1] = p[k];
    }
    if (n & 1) out[n - 1] = p[n / 2];
}

/* o[k] = max(m[2k], m[2k + 1]) (the last one alone when n is odd) */
static void pair_max(const uint8_t *restrict m, int64_t n, uint8_t *restrict o) {
    for (int64_t k = 0; k < n / 2; ++k) o[k] = m[2 * k] > m[2 * k + 1] ? m[2 * k] : m[2 * k + 1];
    if (n & 1) o[n / 2] = m[n - 1];
}

/* max-pool the child level (dims dc) into the parent level (dims dp) */
static int maxpool(const uint8_t *child, fm_dims dc, uint8_t *parent, fm_dims dp) {
    int status = APRNET_OK;
#pragma omp parallel if (fm_size(dc) >= FM_PAR_MIN)
    {
        uint8_t *m = malloc((size_t)dc.nx);
        if (!m) {
#pragma omp atomic write
            status = APRNET_ERR_NOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < dp.nz * dp.ny; ++r) {
            if (!m) continue;
            const int64_t zp = r / dp.ny, yp = r % dp.ny;
            int first = 1;
            for (int64_t z = 2 * zp; z < 2 * zp + 2 && z < dc.nz; ++z)
                for (int64_t y = 2 * yp; y < 2 * yp + 2 && y < dc.ny; ++y) {
                    const uint8_t *restrict s = child + (z * dc.ny + y) * dc.nx;
                    if (first) memcpy(m, s, (size_t)dc.nx);
                    else
                        for (int64_t x = 0; x < dc.nx; ++x) m[x] = s[x] > m[x] ? s[x] : m[x];
                    first = 0;
                }
            pair_max(m, dc.nx, parent + r * dp.nx);
        }
        free(m);
    }
    return status;
}

/* Empty children (level with codes tc, dims dc) of ascendant-neighbour or
 * propagate cells (codes t, dims d) become fillers. */
static int mark_fillers(uint8_t *tc, fm_dims dc, const uint8_t *t, fm_dims d) {
    int status = APRNET_OK;
#pragma omp parallel if (fm_size(dc) >= FM_PAR_MIN)
    {
        uint8_t *pe = malloc((size_t)dc.nx);
        if (!pe) {
#pragma omp atomic write
            status = APRNET_ERR_NOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < dc.nz * dc.ny; ++r) {
            if (!pe) continue;
            const int64_t z = r / dc.ny, y = r % dc.ny;
            expand_row(t + ((z >> 1) * d.ny + (y >> 1)) * d.nx, dc.nx, pe);
            uint8_t *restrict c = tc + r * dc.nx;
            for (int64_t x = 0; x < dc.nx; ++x) {
                const int f = c[x] == ST_EMPTY && (pe[x] == ST_ASC_NEIGHBOUR || pe[x] == ST_PROPAGATE);
                c[x] = f ? ST_FILLER : c[x];
            }
        }
        free(pe);
    }
    return status;
}

/* Parents (codes tp, dims dp) of seed, propagate and ascendant cells (codes t,
 * dims d) become ascendants, unless they are seeds. */
static int mark_ascendants(uint8_t *tp, fm_dims dp, const uint8_t *t, fm_dims d) {
    int status = APRNET_OK;
#pragma omp parallel if (fm_size(d) >= FM_PAR_MIN)
    {
        uint8_t *f = malloc((size_t)(d.nx + dp.nx));
        if (!f) {
#pragma omp atomic write
            status = APRNET_ERR_NOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < dp.nz * dp.ny; ++r) {
            if (!f) continue;
            const int64_t zp = r / dp.ny, yp = r % dp.ny;
            uint8_t *restrict fl = f, *restrict fp = f + d.nx;
            memset(fl, 0, (size_t)d.nx);
            for (int64_t z = 2 * zp; z < 2 * zp + 2 && z < d.nz; ++z)
                for (int64_t y = 2 * yp; y < 2 * yp + 2 && y < d.ny; ++y) {
                    const uint8_t *restrict s = t + (z * d.ny + y) * d.nx;
                    for (int64_t x = 0; x < d.nx; ++x)
                        fl[x] |= (uint8_t)(s[x] == ST_SEED || s[x] == ST_PROPAGATE || s[x] == ST_ASCENDANT);
                }
            pair_max(fl, d.nx, fp);
            uint8_t *restrict o = tp + r * dp.nx;
            for (int64_t k = 0; k < dp.nx; ++k) o[k] = (fp[k] && o[k] != ST_SEED) ? ST_ASCENDANT : o[k];
        }
        free(f);
    }
    return status;
}

/* Resolve level l (codes t, dims d) into particle codes given the resolved
 * parent level (tp, dims dp; NULL at the coarsest level). Returns the number
 * of particles, or -1 when out of memory. */
static int64_t resolve_level(uint8_t *t, fm_dims d, const uint8_t *tp, fm_dims dp, int min_type) {
    int64_t count = 0;
    int status = APRNET_OK;
#pragma omp parallel if (fm_size(d) >= FM_PAR_MIN) reduction(+ : count)
    {
        uint8_t *pe = malloc((size_t)d.nx);
        if (!pe) {
#pragma omp atomic write
            status = APRNET_ERR_NOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < d.nz * d.ny; ++r) {
            if (!pe) continue;
            const int64_t z = r / d.ny, y = r % d.ny;
            uint8_t *restrict c = t + r * d.nx;
            if (tp) expand_row(tp + ((z >> 1) * dp.ny + (y >> 1)) * dp.nx, d.nx, pe);
            else memset(pe, 0, (size_t)d.nx);
            int64_t cnt = 0;
            for (int64_t x = 0; x < d.nx; ++x) {
                const int eff = pe[x] == FM_UP ? ST_UPSEED : c[x];
                const uint8_t code = (eff > min_type && eff <= ST_UPSEED) ? FM_PART
                                     : (eff >= ST_SEED && eff <= min_type) ? FM_UP : 0;
                c[x] = code;
                cnt += code == FM_PART;
            }
            count += cnt;
        }
        free(pe);
    }
    return status == APRNET_OK ? count : -1;
}

int aprnet_pulling_scheme(const uint8_t *level_ds, const int64_t shape[3], int level_max,
                          int level_min, int neighborhood_optimization, uint8_t *tree,
                          int64_t tree_bytes, int64_t *level_counts, const int32_t *cancel) {
    if (!shape || !level_counts || level_max < 0 || level_max > 60 || level_min < 0 ||
        level_min > level_max)
        return APRNET_ERR_ARG;
    for (int l = 0; l <= level_max; ++l) level_counts[l] = 0;
    const int lps = level_max - 1;
    if (lps < level_min) { /* no tree: every pixel is a particle */
        level_counts[level_max] = shape[0] * shape[1] * shape[2];
        return APRNET_OK;
    }
    if (!tree || !level_ds || tree_bytes != aprnet_pulling_tree_bytes(shape, level_max, level_min))
        return APRNET_ERR_ARG;
    const int nlev = lps - level_min + 1;
    uint8_t *lv[64];
    fm_dims dl[64];
    for (int l = level_min; l <= lps; ++l) {
        lv[l] = tree + level_offset(shape, level_max, level_min, l);
        dl[l] = level_dims(shape, level_max, l);
    }
    (void)nlev;
    const int64_t nfine = fm_size(dl[lps]);
    uint8_t *m1 = aprnet_fm_alloc((size_t)nfine), *m2 = aprnet_fm_alloc((size_t)nfine);
    if (!m1 || !m2) {
        free(m1);
        free(m2);
        return APRNET_ERR_NOMEM;
    }
    /* required levels, max-pooled down the tree, then seeds */
    memcpy(lv[lps], level_ds, (size_t)nfine);
    int status = APRNET_OK;
    for (int l = lps - 1; l >= level_min && status == APRNET_OK; --l) {
        status = maxpool(lv[l + 1], dl[l + 1], lv[l], dl[l]);
        if (status == APRNET_OK && fm_cancelled(cancel)) status = APRNET_ERR_CANCELLED;
    }
    for (int l = level_min; l <= lps; ++l) {
        uint8_t *t = lv[l];
        const int64_t n = fm_size(dl[l]);
#pragma omp parallel for schedule(static) if (n >= FM_PAR_MIN)
        for (int64_t i = 0; i < n; ++i) {
            const int v = t[i];
            int seed = (v == l) || (l == lps && v >= l) || (l == level_min && v <= l);
            t[i] = seed ? ST_SEED : ST_EMPTY;
        }
    }
    for (int l = lps; l >= level_min && status == APRNET_OK; --l) {
        if (fm_cancelled(cancel)) {
            status = APRNET_ERR_CANCELLED;
            break;
        }
        uint8_t *t = lv[l];
        const fm_dims d = dl[l];
        const int64_t n = fm_size(d);
        if (l != lps) {
            /* cells next to an ascendant: empty -> ascendant neighbour, seed -> propagate */
            const uint8_t *near = dilate(t, PRED_ASC, m1, m2, d);
#pragma omp parallel for schedule(static) if (n >= FM_PAR_MIN)
            for (int64_t i = 0; i < n; ++i) {
                const uint8_t v = t[i];
                const uint8_t nv = v == ST_EMPTY ? ST_ASC_NEIGHBOUR : v == ST_SEED ? ST_PROPAGATE : v;
                t[i] = near[i] ? nv : v;
            }
            /* empty children of those become fillers */
            status = mark_fillers(lv[l + 1], dl[l + 1], t, d);
            if (status != APRNET_OK) break;
        }
        /* empty neighbours of seeds become boundary cells */
        const uint8_t *near = dilate(t, PRED_SEED, m1, m2, d);
#pragma omp parallel for schedule(static) if (n >= FM_PAR_MIN)
        for (int64_t i = 0; i < n; ++i) t[i] = (near[i] && t[i] == ST_EMPTY) ? ST_BOUNDARY : t[i];
        /* parents of seeds and ascendants become ascendants (seeds stay seeds) */
        if (l - 1 >= level_min) {
            status = mark_ascendants(lv[l - 1], dl[l - 1], t, d);
            if (status != APRNET_OK) break;
        }
    }
    free(m1);
    free(m2);
    if (status != APRNET_OK) return status;

    /* Resolve into particle codes, coarse to fine. A cell whose parent is
     * "upsampled" (seed, or also boundary without the neighbourhood
     * optimisation) becomes a particle itself. */
    const int min_type = neighborhood_optimization ? ST_SEED : ST_BOUNDARY;
    for (int l = level_min; l <= lps; ++l) {
        uint8_t *t = lv[l];
        const fm_dims d = dl[l];
        const uint8_t *tp = l > level_min ? lv[l - 1] : NULL;
        const fm_dims dp = l > level_min ? dl[l - 1] : d;
        const int64_t count = resolve_level(t, d, tp, dp, min_type);
        if (count < 0) return APRNET_ERR_NOMEM;
        level_counts[l] = count;
    }
    /* pixels under upsampled cells of level lps */
    {
        const fm_dims d = dl[lps];
        const uint8_t *t = lv[lps];
        int64_t count = 0;
#pragma omp parallel for schedule(static) if (fm_size(d) >= FM_PAR_MIN) reduction(+ : count)
        for (int64_t r = 0; r < d.nz * d.ny; ++r) {
            const int64_t z = r / d.ny, y = r % d.ny;
            const int64_t ez = (2 * z + 1 < shape[0]) ? 2 : 1, ey = (2 * y + 1 < shape[1]) ? 2 : 1;
            const uint8_t *c = t + r * d.nx;
            for (int64_t x = 0; x < d.nx; ++x) {
                if (c[x] == FM_UP) {
                    const int64_t ex = (2 * x + 1 < shape[2]) ? 2 : 1;
                    count += ez * ey * ex;
                }
            }
        }
        level_counts[level_max] = count;
    }
    return APRNET_OK;
}

/* Particles of one row of level l (numpy row r = (z, y) of grid d):
 * mode 0: every cell; mode 1: cells coded FM_PART (codes c of this row);
 * mode 2 (l = level_max): pixels under parents coded FM_UP (codes c of the
 * parent row, d.nx pixels). Counts them, or writes them from index p when
 * levels != NULL. */
static int64_t emit_row(int mode, const uint8_t *restrict c, fm_dims d, int64_t r, int l, int ndim,
                        int64_t p, uint8_t *restrict levels, int32_t *restrict coords) {
    const int64_t nx = d.nx;
    const int32_t z = (int32_t)(r / d.ny), y = (int32_t)(r % d.ny);
    if (!levels) {
        int64_t cnt = 0;
        if (mode == 0) return nx;
        if (mode == 1) {
            for (int64_t x = 0; x < nx; ++x) cnt += c[x] == FM_PART;
        } else {
            const int64_t np = (nx + 1) / 2;
            for (int64_t x = 0; x < nx / 2; ++x) cnt += 2 * (c[x] == FM_UP);
            if (np > nx / 2) cnt += c[np - 1] == FM_UP;
        }
        return cnt;
    }
    const int64_t p0 = p;
    int32_t *q = coords + p * ndim;
#define EMIT_X(xv)                        \
    do {                                  \
        if (ndim == 3) *q++ = z;          \
        *q++ = y;                         \
        *q++ = (int32_t)(xv);             \
        ++p;                              \
    } while (0)
    if (mode == 0) {
        for (int64_t x = 0; x < nx; ++x) EMIT_X(x);
    } else if (mode == 1) {
        for (int64_t x = 0; x < nx; ++x)
            if (c[x] == FM_PART) EMIT_X(x);
    } else {
        const int64_t np = (nx + 1) / 2;
        for (int64_t xp = 0; xp < np; ++xp) {
            if (c[xp] != FM_UP) continue;
            EMIT_X(2 * xp);
            if (2 * xp + 1 < nx) EMIT_X(2 * xp + 1);
        }
    }
#undef EMIT_X
    memset(levels + p0, l, (size_t)(p - p0));
    return p - p0;
}

/* Write particles in the contract order: by level, then row-major (z, y, x). */
int aprnet_pulling_emit(const uint8_t *tree, int64_t tree_bytes, const int64_t shape[3],
                        int level_max, int level_min, int ndim, int64_t n_particles,
                        uint8_t *levels, int32_t *coords) {
    if (!shape || (ndim != 2 && ndim != 3) || (ndim == 2 && shape[0] != 1) || level_max < 0 ||
        level_max > 60 || level_min < 0 || level_min > level_max || n_particles < 0)
        return APRNET_ERR_ARG;
    if (n_particles > 0 && (!levels || !coords)) return APRNET_ERR_ARG;
    const int lps = level_max - 1;
    const int has_tree = lps >= level_min;
    if (has_tree && (!tree || tree_bytes != aprnet_pulling_tree_bytes(shape, level_max, level_min)))
        return APRNET_ERR_ARG;
    int64_t written = 0;
    for (int l = has_tree ? level_min : level_max; l <= level_max; ++l) {
        const fm_dims d = level_dims(shape, level_max, l);
        const int64_t nrows = d.nz * d.ny;
        int64_t *start = malloc(sizeof(int64_t) * (size_t)(nrows + 1));
        if (!start) return APRNET_ERR_NOMEM;
        const uint8_t *t = NULL; /* codes of this level, or of the parent level for level_max */
        fm_dims dp = d;
        if (has_tree) {
            if (l <= lps) t = tree + level_offset(shape, level_max, level_min, l);
            else {
                t = tree + level_offset(shape, level_max, level_min, lps);
                dp = level_dims(shape, level_max, lps);
            }
        }
        /* mode: 0 = all cells, 1 = cells with FM_PART, 2 = pixels under FM_UP parents */
        const int mode = !has_tree ? 0 : (l <= lps ? 1 : 2);
#define ROW_CODES(r) \
    (mode == 0 ? NULL : mode == 1 ? t + (r) * d.nx : t + (((r) / d.ny >> 1) * dp.ny + ((r) % d.ny >> 1)) * dp.nx)
#pragma omp parallel for schedule(static) if (nrows * d.nx >= FM_PAR_MIN)
        for (int64_t r = 0; r < nrows; ++r)
            start[r + 1] = emit_row(mode, ROW_CODES(r), d, r, l, ndim, 0, NULL, NULL);
        start[0] = written;
        for (int64_t r = 0; r < nrows; ++r) start[r + 1] += start[r];
        if (start[nrows] > n_particles) {
            free(start);
            return APRNET_ERR_BOUNDS;
        }
#pragma omp parallel for schedule(static) if (nrows * d.nx >= FM_PAR_MIN)
        for (int64_t r = 0; r < nrows; ++r)
            emit_row(mode, ROW_CODES(r), d, r, l, ndim, start[r], levels, coords);
#undef ROW_CODES
        written = start[nrows];
        free(start);
    }
    if (written != n_particles) return APRNET_ERR_BOUNDS;
    return APRNET_OK;
}
