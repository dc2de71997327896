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
#include "formation_internal.h"

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

/* out = 1 where any cell of the clipped 3^d neighbourhood has mask != 0.
 * mask and out are distinct; tmp has the same size. */
static void dilate(const uint8_t *mask, uint8_t *out, uint8_t *tmp, fm_dims d) {
    const int64_t nz = d.nz, ny = d.ny, nx = d.nx, plane = ny * nx;
    /* x */
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nz * ny; ++r) {
        const uint8_t *s = mask + r * nx;
        uint8_t *o = tmp + r * nx;
        for (int64_t x = 0; x < nx; ++x) {
            uint8_t v = s[x];
            if (x > 0) v |= s[x - 1];
            if (x + 1 < nx) v |= s[x + 1];
            o[x] = v ? 1 : 0;
        }
    }
    /* y: tmp -> out */
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nz * ny; ++r) {
        const int64_t z = r / ny, y = r % ny;
        const uint8_t *c = tmp + z * plane + y * nx;
        const uint8_t *a = y > 0 ? c - nx : c;
        const uint8_t *b = y + 1 < ny ? c + nx : c;
        uint8_t *o = out + r * nx;
        for (int64_t x = 0; x < nx; ++x) o[x] = a[x] | c[x] | b[x];
    }
    if (nz > 1) {
        /* z: out -> tmp -> out */
        memcpy(tmp, out, (size_t)(nz * plane));
#pragma omp parallel for schedule(static)
        for (int64_t z = 0; z < nz; ++z) {
            const uint8_t *c = tmp + z * plane;
            const uint8_t *a = z > 0 ? c - plane : c;
            const uint8_t *b = z + 1 < nz ? c + plane : c;
            uint8_t *o = out + z * plane;
            for (int64_t i = 0; i < plane; ++i) o[i] = a[i] | c[i] | b[i];
        }
    }
}

/* max-pool the child level (dims dc) into the parent level (dims dp) */
static void maxpool(const uint8_t *child, fm_dims dc, uint8_t *parent, fm_dims dp) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < dp.nz * dp.ny; ++r) {
        const int64_t zp = r / dp.ny, yp = r % dp.ny;
        uint8_t *o = parent + r * dp.nx;
        for (int64_t x = 0; x < dp.nx; ++x) o[x] = 0;
        for (int64_t z = 2 * zp; z < 2 * zp + 2 && z < dc.nz; ++z)
            for (int64_t y = 2 * yp; y < 2 * yp + 2 && y < dc.ny; ++y) {
                const uint8_t *s = child + (z * dc.ny + y) * dc.nx;
                for (int64_t x = 0; x < dc.nx; ++x)
                    if (s[x] > o[x >> 1]) o[x >> 1] = s[x];
            }
    }
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
    uint8_t *m1 = malloc((size_t)nfine), *m2 = malloc((size_t)nfine), *m3 = malloc((size_t)nfine);
    if (!m1 || !m2 || !m3) {
        free(m1);
        free(m2);
        free(m3);
        return APRNET_ERR_NOMEM;
    }
    /* required levels, max-pooled down the tree, then seeds */
    memcpy(lv[lps], level_ds, (size_t)nfine);
    for (int l = lps - 1; l >= level_min; --l) maxpool(lv[l + 1], dl[l + 1], lv[l], dl[l]);
    for (int l = level_min; l <= lps; ++l) {
        uint8_t *t = lv[l];
        const int64_t n = fm_size(dl[l]);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; ++i) {
            const int v = t[i];
            int seed = (v == l) || (l == lps && v >= l) || (l == level_min && v <= l);
            t[i] = seed ? ST_SEED : ST_EMPTY;
        }
    }
    int status = APRNET_OK;
    for (int l = lps; l >= level_min; --l) {
        if (fm_cancelled(cancel)) {
            status = APRNET_ERR_CANCELLED;
            break;
        }
        uint8_t *t = lv[l];
        const fm_dims d = dl[l];
        const int64_t n = fm_size(d);
        if (l != lps) {
            /* cells next to an ascendant: empty -> ascendant neighbour, seed -> propagate */
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < n; ++i) m1[i] = t[i] == ST_ASCENDANT;
            dilate(m1, m2, m3, d);
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < n; ++i) {
                if (m2[i]) {
                    if (t[i] == ST_EMPTY) t[i] = ST_ASC_NEIGHBOUR;
                    else if (t[i] == ST_SEED) t[i] = ST_PROPAGATE;
                }
            }
            /* empty children of those become fillers */
            uint8_t *tc = lv[l + 1];
            const fm_dims dc = dl[l + 1];
#pragma omp parallel for schedule(static)
            for (int64_t r = 0; r < dc.nz * dc.ny; ++r) {
                const int64_t z = r / dc.ny, y = r % dc.ny;
                const uint8_t *p = t + ((z >> 1) * d.ny + (y >> 1)) * d.nx;
                uint8_t *c = tc + r * dc.nx;
                for (int64_t x = 0; x < dc.nx; ++x) {
                    const uint8_t ps = p[x >> 1];
                    if (c[x] == ST_EMPTY && (ps == ST_ASC_NEIGHBOUR || ps == ST_PROPAGATE)) c[x] = ST_FILLER;
                }
            }
        }
        /* empty neighbours of seeds become boundary cells */
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; ++i) m1[i] = t[i] == ST_SEED || t[i] == ST_PROPAGATE;
        dilate(m1, m2, m3, d);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; ++i)
            if (m2[i] && t[i] == ST_EMPTY) t[i] = ST_BOUNDARY;
        /* parents of seeds and ascendants become ascendants (seeds stay seeds) */
        if (l - 1 >= level_min) {
            uint8_t *tp = lv[l - 1];
            const fm_dims dp = dl[l - 1];
#pragma omp parallel for schedule(static)
            for (int64_t r = 0; r < dp.nz * dp.ny; ++r) {
                const int64_t zp = r / dp.ny, yp = r % dp.ny;
                uint8_t *o = tp + r * dp.nx;
                for (int64_t z = 2 * zp; z < 2 * zp + 2 && z < d.nz; ++z)
                    for (int64_t y = 2 * yp; y < 2 * yp + 2 && y < d.ny; ++y) {
                        const uint8_t *s = t + (z * d.ny + y) * d.nx;
                        for (int64_t x = 0; x < d.nx; ++x) {
                            const uint8_t cs = s[x];
                            if ((cs == ST_SEED || cs == ST_PROPAGATE || cs == ST_ASCENDANT) &&
                                o[x >> 1] != ST_SEED)
                                o[x >> 1] = ST_ASCENDANT;
                        }
                    }
            }
        }
    }
    free(m1);
    free(m2);
    free(m3);
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
        int64_t count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count)
        for (int64_t r = 0; r < d.nz * d.ny; ++r) {
            const int64_t z = r / d.ny, y = r % d.ny;
            uint8_t *c = t + r * d.nx;
            const uint8_t *p = tp ? tp + ((z >> 1) * dp.ny + (y >> 1)) * dp.nx : NULL;
            for (int64_t x = 0; x < d.nx; ++x) {
                int eff = c[x];
                if (p && p[x >> 1] == FM_UP) eff = ST_UPSEED;
                uint8_t code = 0;
                if (eff > min_type && eff <= ST_UPSEED) code = FM_PART;
                else if (eff >= ST_SEED && eff <= min_type) code = FM_UP;
                c[x] = code;
                count += code == FM_PART;
            }
        }
        level_counts[l] = count;
    }
    /* pixels under upsampled cells of level lps */
    {
        const fm_dims d = dl[lps];
        const uint8_t *t = lv[lps];
        int64_t count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count)
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
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < nrows; ++r) {
            int64_t cnt = 0;
            if (mode == 0) cnt = d.nx;
            else if (mode == 1) {
                const uint8_t *c = t + r * d.nx;
                for (int64_t x = 0; x < d.nx; ++x) cnt += c[x] == FM_PART;
            } else {
                const int64_t z = r / d.ny, y = r % d.ny;
                const uint8_t *c = t + ((z >> 1) * dp.ny + (y >> 1)) * dp.nx;
                for (int64_t x = 0; x < d.nx; ++x) cnt += c[x >> 1] == FM_UP;
            }
            start[r + 1] = cnt;
        }
        start[0] = written;
        for (int64_t r = 0; r < nrows; ++r) start[r + 1] += start[r];
        if (start[nrows] > n_particles) {
            free(start);
            return APRNET_ERR_BOUNDS;
        }
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < nrows; ++r) {
            const int64_t z = r / d.ny, y = r % d.ny;
            int64_t p = start[r];
            const uint8_t *c = NULL;
            if (mode == 1) c = t + r * d.nx;
            if (mode == 2) c = t + ((z >> 1) * dp.ny + (y >> 1)) * dp.nx;
            for (int64_t x = 0; x < d.nx; ++x) {
                int take = mode == 0 || (mode == 1 && c[x] == FM_PART) || (mode == 2 && c[x >> 1] == FM_UP);
                if (!take) continue;
                levels[p] = (uint8_t)l;
                int32_t *q = coords + p * ndim;
                if (ndim == 3) *q++ = (int32_t)z;
                *q++ = (int32_t)y;
                *q = (int32_t)x;
                ++p;
            }
        }
        written = start[nrows];
        free(start);
    }
    if (written != n_particles) return APRNET_ERR_BOUNDS;
    return APRNET_OK;
}
