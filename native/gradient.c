/* gradient.c -- from the smoothed image (spline coefficients), in one pass:
 *  - the gradient magnitude (central differences, mirror boundaries so the
 *    derivative across an image edge is 0), max-downsampled 2x per axis;
 *  - the 2x mean downsampling of the smoothed image (edge cells average the
 *    pixels that exist). */
#include <math.h>
#include <stdlib.h>

#include "aprnet.h"
#include "formation_internal.h"

/* g[x] = squared gradient magnitude of row (z, y); the x term is left out at
 * both ends of the row (mirror boundary: the central difference is 0). */
static void grad2_row(const float *restrict coef, fm_dims d, int64_t z, int64_t y, float iz, float iy,
                      float ix, float *restrict g) {
    const int64_t nz = d.nz, ny = d.ny, nx = d.nx, plane = ny * nx;
    const float *restrict row = coef + z * plane + y * nx;
    const float *restrict ym = coef + z * plane + fm_mirror(y - 1, ny) * nx;
    const float *restrict yp = coef + z * plane + fm_mirror(y + 1, ny) * nx;
    const float *restrict zm = coef + fm_mirror(z - 1, nz) * plane + y * nx;
    const float *restrict zp = coef + fm_mirror(z + 1, nz) * plane + y * nx;
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

/* grad_ds and smooth_ds have shape ceil(d / 2); h = (hz, hy, hx) pixel spacing. */
int aprnet_fm_grad_mean_ds(const float *coef, fm_dims d, const double h[3], float *grad_ds,
                           float *smooth_ds) {
    int status = APRNET_OK;
    const int64_t nz = d.nz, ny = d.ny, nx = d.nx, plane = ny * nx;
    const fm_dims dh = fm_half_dims(d);
    const float iz = (float)(0.5 / h[0]), iy = (float)(0.5 / h[1]), ix = (float)(0.5 / h[2]);
    const int64_t nrows_ds = dh.nz * dh.ny, nxh = nx / 2;
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
            if (!buf) continue;
            float *restrict g = buf, *restrict gm = buf + nx, *restrict acc = buf + 2 * nx;
            const int64_t zd = r / dh.ny, yd = r % dh.ny;
            const int64_t z1 = (2 * zd + 1 < nz) ? 2 * zd + 1 : 2 * zd;
            const int64_t y1 = (2 * yd + 1 < ny) ? 2 * yd + 1 : 2 * yd;
            const int ncell = (int)((z1 - 2 * zd + 1) * (y1 - 2 * yd + 1));
            int q = 0;
            for (int64_t z = 2 * zd; z <= z1; ++z) {
                for (int64_t y = 2 * yd; y <= y1; ++y, ++q) {
                    grad2_row(coef, d, z, y, iz, iy, ix, q ? g : gm);
                    if (q)
                        for (int64_t x = 0; x < nx; ++x) gm[x] = g[x] > gm[x] ? g[x] : gm[x];
                    const float *restrict row = coef + z * plane + y * nx;
                    if (!q)
                        for (int64_t k = 0; k < dh.nx; ++k) acc[k] = 0.0f;
                    for (int64_t k = 0; k < nxh; ++k) acc[k] += row[2 * k] + row[2 * k + 1];
                    if (nx & 1) acc[dh.nx - 1] += row[nx - 1];
                }
            }
            float *restrict og = grad_ds + r * dh.nx, *restrict om = smooth_ds + r * dh.nx;
            for (int64_t k = 0; k < nxh; ++k) {
                const float a = gm[2 * k] > gm[2 * k + 1] ? gm[2 * k] : gm[2 * k + 1];
                og[k] = sqrtf(a > 0.0f ? a : 0.0f);
            }
            if (nx & 1) og[dh.nx - 1] = sqrtf(gm[nx - 1] > 0.0f ? gm[nx - 1] : 0.0f);
            const float inv_full = 1.0f / (float)(2 * ncell);
            for (int64_t k = 0; k < nxh; ++k) om[k] = acc[k] * inv_full;
            if (nx & 1) om[dh.nx - 1] = acc[dh.nx - 1] / (float)ncell;
        }
        free(buf);
    }
    return status;
}
