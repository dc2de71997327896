/* gradient.c -- from the smoothed image (spline coefficients), in one pass:
 *  - the gradient magnitude (central differences, mirror boundaries so the
 *    derivative across an image edge is 0), max-downsampled 2x per axis;
 *  - the 2x mean downsampling of the smoothed image (edge cells average the
 *    pixels that exist).
 * For 3D images the pass can also run the spline's last (z) pass itself, on
 * a few rows at a time held in per-thread buffers, so the fully smoothed
 * image is never written to (or read back from) memory. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "aprnet.h"
#include "fm_common.h"

/* g[x] = squared gradient magnitude of a row of nx values; ym/yp/zm/zp are the
 * neighbouring rows along y and z. The x term is left out at both ends of the
 * row (mirror boundary: the central difference is 0). */
static void grad2_row(const float *restrict row, const float *restrict ym, const float *restrict yp,
                      const float *restrict zm, const float *restrict zp, int64_t nx, float iz, float iy,
                      float ix, float *restrict g) {
    if (nx == 1) {
        const float gy = (yp[0] - ym[0]) * iy, gz = (zp[0] - zm[0]) * iz;
        g[0] = gy * gy + gz * gz;
        return;
    }
    for (int64_t e = 0; e < 2; ++e) {
        const int64_t x = e ? nx - 1 : 0;
        const float gy = (yp[x] - ym[x]) * iy, gz = (zp[x] - zm[x]) * iz;
        g[x] = gy * gy + gz * gz;
    }
    for (int64_t x = 1; x < nx - 1; ++x) {
        const float gy = (yp[x] - ym[x]) * iy, gz = (zp[x] - zm[x]) * iz;
        const float gx = (row[x + 1] - row[x - 1]) * ix;
        g[x] = (gy * gy + gz * gz) + gx * gx;
    }
}

/* Accumulates row q (0-based, in z-major order) of an output cell: gm =
 * max of the squared gradients, acc = sums of the x pairs. g is scratch. */
static void cell_row(int q, const float *restrict row, const float *ym, const float *yp, const float *zm,
                     const float *zp, int64_t nx, float iz, float iy, float ix, float *restrict g,
                     float *restrict gm, float *restrict acc) {
    const int64_t nxh = nx / 2, nxd = nx - nxh;
    grad2_row(row, ym, yp, zm, zp, nx, iz, iy, ix, q ? g : gm);
    if (q)
        for (int64_t x = 0; x < nx; ++x) gm[x] = g[x] > gm[x] ? g[x] : gm[x];
    if (!q)
        for (int64_t k = 0; k < nxd; ++k) acc[k] = 0.0f;
    for (int64_t k = 0; k < nxh; ++k) acc[k] += row[2 * k] + row[2 * k + 1];
    if (nx & 1) acc[nxd - 1] += row[nx - 1];
}

/* Writes one output row from gm and acc (ncell = rows accumulated). */
static void cell_out(const float *restrict gm, const float *restrict acc, int64_t nx, int ncell,
                     float *restrict og, float *restrict om) {
    const int64_t nxh = nx / 2, nxd = nx - nxh;
    for (int64_t k = 0; k < nxh; ++k) {
        const float a = gm[2 * k] > gm[2 * k + 1] ? gm[2 * k] : gm[2 * k + 1];
        og[k] = sqrtf(a > 0.0f ? a : 0.0f);
    }
    if (nx & 1) og[nxd - 1] = sqrtf(gm[nx - 1] > 0.0f ? gm[nx - 1] : 0.0f);
    const float inv_full = 1.0f / (float)(2 * ncell);
    for (int64_t k = 0; k < nxh; ++k) om[k] = acc[k] * inv_full;
    if (nx & 1) om[nxd - 1] = acc[nxd - 1] / (float)ncell;
}

/* grad_ds and smooth_ds have shape ceil(d / 2); h = (hz, hy, hx) pixel spacing. */
int aprnet_fm_grad_mean_ds(const float *coef, fm_dims d, const double h[3], float *grad_ds,
                           float *smooth_ds, const int32_t *cancel) {
    int status = APRNET_OK;
    const int64_t nz = d.nz, ny = d.ny, nx = d.nx, plane = ny * nx;
    const fm_dims dh = fm_half_dims(d);
    const float iz = (float)(0.5 / h[0]), iy = (float)(0.5 / h[1]), ix = (float)(0.5 / h[2]);
    const int64_t nrows_ds = dh.nz * dh.ny;
#pragma omp parallel
    {
        /* g: one row of squared gradients; gm: their max over the rows of a cell */
        float *buf = malloc(sizeof(float) * (size_t)(2 * nx + dh.nx));
        if (!buf) {
#pragma omp atomic write
            status = APRNET_ERR_NOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < nrows_ds; ++r) {
            if (!buf || fm_cancelled(cancel)) continue;
            const int64_t zd = r / dh.ny, yd = r % dh.ny;
            int q = 0;
            for (int64_t z = 2 * zd; z < 2 * zd + 2 && z < nz; ++z)
                for (int64_t y = 2 * yd; y < 2 * yd + 2 && y < ny; ++y, ++q) {
                    const float *p = coef + z * plane;
                    cell_row(q, p + y * nx, p + fm_mirror(y - 1, ny) * nx, p + fm_mirror(y + 1, ny) * nx,
                             coef + fm_mirror(z - 1, nz) * plane + y * nx,
                             coef + fm_mirror(z + 1, nz) * plane + y * nx, nx, iz, iy, ix, buf,
                             buf + nx, buf + 2 * nx);
                }
            cell_out(buf + nx, buf + 2 * nx, nx, q, grad_ds + r * dh.nx, smooth_ds + r * dh.nx);
        }
        free(buf);
    }
    if (status == APRNET_OK && fm_cancelled(cancel)) status = APRNET_ERR_CANCELLED;
    return status;
}

/* Bytes of the per-thread row buffers of aprnet_fm_grad_mean_ds_zfilter. */
int64_t aprnet_fm_zfused_bytes(fm_dims d) { return (int64_t)sizeof(float) * (4 * d.nz * d.nx + 8 * d.nx); }

/* Same results as running the z pass of the spline on xy (in place) and then
 * aprnet_fm_grad_mean_ds, but row by row: each thread takes a contiguous range
 * of output rows yd and keeps the z-filtered image rows y (all z) it needs in
 * four row buffers, so a row is filtered once except at range starts. */
int aprnet_fm_grad_mean_ds_zfilter(const float *xy, fm_dims d, const double h[3],
                                   const fm_line_filter *zf, float *grad_ds, float *smooth_ds,
                                   const int32_t *cancel) {
    int status = APRNET_OK;
    const int64_t nz = d.nz, ny = d.ny, nx = d.nx, plane = ny * nx, rowlen = nz * nx;
    const fm_dims dh = fm_half_dims(d);
    const float iz = (float)(0.5 / h[0]), iy = (float)(0.5 / h[1]), ix = (float)(0.5 / h[2]);
#pragma omp parallel
    {
        float *buf = malloc((size_t)aprnet_fm_zfused_bytes(d));
        if (!buf) {
#pragma omp atomic write
            status = APRNET_ERR_NOMEM;
        }
        int64_t tag[4] = {-1, -1, -1, -1}; /* image row held by each buffer */
        float *slot[4];
        for (int k = 0; k < 4; ++k) slot[k] = buf ? buf + k * rowlen : NULL;
        float *g = buf ? buf + 4 * rowlen : NULL, *gm = g ? g + nx : NULL, *acc = g ? g + 2 * nx : NULL;
        float *tmp = g ? g + 3 * nx : NULL;
#pragma omp for schedule(static)
        for (int64_t yd = 0; yd < dh.ny; ++yd) {
            if (!buf || fm_cancelled(cancel)) continue;
            const int64_t y0 = 2 * yd, y1 = (2 * yd + 1 < ny) ? 2 * yd + 1 : 2 * yd;
            /* rows needed: y0 - 1 .. y1 + 1 (mirrored) */
            int64_t need[4];
            int nneed = 0;
            for (int64_t y = y0 - 1; y <= y1 + 1; ++y) need[nneed++] = fm_mirror(y, ny);
            const float *rows[4];
            for (int i = 0; i < nneed; ++i) {
                int k = -1;
                for (int j = 0; j < 4; ++j)
                    if (tag[j] == need[i]) k = j;
                if (k < 0) { /* fill a buffer that holds no needed row */
                    for (int j = 0; j < 4 && k < 0; ++j) {
                        int used = 0;
                        for (int m = 0; m < nneed; ++m) used |= tag[j] == need[m];
                        if (!used) k = j;
                    }
                    float *sl = slot[k];
                    for (int64_t z = 0; z < nz; ++z)
                        memcpy(sl + z * nx, xy + z * plane + need[i] * nx, sizeof(float) * (size_t)nx);
                    aprnet_fm_line_filter_apply(zf, sl, nx, tmp);
                    tag[k] = need[i];
                }
                rows[i] = slot[k];
            }
            /* rows[i] holds image row y0 - 1 + i (mirrored) */
            for (int64_t zd = 0; zd < dh.nz; ++zd) {
                int q = 0;
                for (int64_t z = 2 * zd; z < 2 * zd + 2 && z < nz; ++z)
                    for (int64_t y = y0; y <= y1; ++y, ++q) {
                        const float *c = rows[y - y0 + 1];
                        cell_row(q, c + z * nx, rows[y - y0] + z * nx, rows[y - y0 + 2] + z * nx,
                                 c + fm_mirror(z - 1, nz) * nx, c + fm_mirror(z + 1, nz) * nx, nx, iz, iy, ix,
                                 g, gm, acc);
                    }
                const int64_t o = (zd * dh.ny + yd) * dh.nx;
                cell_out(gm, acc, nx, q, grad_ds + o, smooth_ds + o);
            }
        }
        free(buf);
    }
    if (status == APRNET_OK && fm_cancelled(cancel)) status = APRNET_ERR_CANCELLED;
    return status;
}
