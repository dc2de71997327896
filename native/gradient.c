/* gradient.c -- gradient magnitude of the spline coefficients (central
 * differences, mirror boundaries so the derivative across an image edge is 0),
 * max-downsampled 2x per axis, and the 2x mean downsampling used for the
 * smoothed image (edge cells average the pixels that exist). */
#include <math.h>
#include <stdlib.h>

#include "aprnet.h"
#include "formation_internal.h"

/* grad_ds has shape ceil(d / 2); h = (hz, hy, hx) pixel spacing. */
int aprnet_fm_gradient_maxds(const float *coef, fm_dims d, const double h[3], float *grad_ds) {
    int status = APRNET_OK;
    const int64_t nz = d.nz, ny = d.ny, nx = d.nx, plane = ny * nx;
    const fm_dims dh = fm_half_dims(d);
    const float iz = (float)(0.5 / h[0]), iy = (float)(0.5 / h[1]), ix = (float)(0.5 / h[2]);
    const int64_t nrows_ds = dh.nz * dh.ny;
#pragma omp parallel
    {
        float *g = malloc(sizeof(float) * (size_t)nx);
        if (!g) {
#pragma omp atomic write
            status = APRNET_ERR_NOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < nrows_ds; ++r) {
            if (!g) continue;
            const int64_t zd = r / dh.ny, yd = r % dh.ny;
            float *out = grad_ds + r * dh.nx;
            for (int64_t k = 0; k < dh.nx; ++k) out[k] = 0.0f;
            for (int64_t z = 2 * zd; z < 2 * zd + 2 && z < nz; ++z) {
                for (int64_t y = 2 * yd; y < 2 * yd + 2 && y < ny; ++y) {
                    const float *row = coef + z * plane + y * nx;
                    const float *ym = coef + z * plane + fm_mirror(y - 1, ny) * nx;
                    const float *yp = coef + z * plane + fm_mirror(y + 1, ny) * nx;
                    const float *zm = coef + fm_mirror(z - 1, nz) * plane + y * nx;
                    const float *zp = coef + fm_mirror(z + 1, nz) * plane + y * nx;
                    for (int64_t x = 0; x < nx; ++x) {
                        float gy = (yp[x] - ym[x]) * iy;
                        float gz = (zp[x] - zm[x]) * iz;
                        g[x] = gy * gy + gz * gz;
                    }
                    if (nx > 1) {
                        for (int64_t x = 1; x < nx - 1; ++x) {
                            float gx = (row[x + 1] - row[x - 1]) * ix;
                            g[x] += gx * gx;
                        }
                    }
                    for (int64_t k = 0; k < nx / 2; ++k) {
                        float a = g[2 * k] > g[2 * k + 1] ? g[2 * k] : g[2 * k + 1];
                        if (a > out[k]) out[k] = a;
                    }
                    if (nx & 1) {
                        if (g[nx - 1] > out[dh.nx - 1]) out[dh.nx - 1] = g[nx - 1];
                    }
                }
            }
            for (int64_t k = 0; k < dh.nx; ++k) out[k] = sqrtf(out[k]);
        }
        free(g);
    }
    return status;
}

void aprnet_fm_mean_downsample(const float *img, fm_dims d, float *out) {
    const int64_t nz = d.nz, ny = d.ny, nx = d.nx, plane = ny * nx;
    const fm_dims dh = fm_half_dims(d);
    const int64_t nrows_ds = dh.nz * dh.ny;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nrows_ds; ++r) {
        const int64_t zd = r / dh.ny, yd = r % dh.ny;
        const int64_t z1 = (2 * zd + 1 < nz) ? 2 * zd + 1 : 2 * zd;
        const int64_t y1 = (2 * yd + 1 < ny) ? 2 * yd + 1 : 2 * yd;
        const int nzr = (int)(z1 - 2 * zd + 1), nyr = (int)(y1 - 2 * yd + 1);
        float *o = out + r * dh.nx;
        const float *rows[4];
        int nrows = 0;
        for (int64_t z = 2 * zd; z <= z1; ++z)
            for (int64_t y = 2 * yd; y <= y1; ++y) rows[nrows++] = img + z * plane + y * nx;
        const float inv_full = 1.0f / (float)(2 * nzr * nyr);
        for (int64_t k = 0; k < nx / 2; ++k) {
            float s = 0.0f;
            for (int q = 0; q < nrows; ++q) s += rows[q][2 * k] + rows[q][2 * k + 1];
            o[k] = s * inv_full;
        }
        if (nx & 1) {
            float s = 0.0f;
            for (int q = 0; q < nrows; ++q) s += rows[q][nx - 1];
            o[dh.nx - 1] = s / (float)(nzr * nyr);
        }
    }
}
