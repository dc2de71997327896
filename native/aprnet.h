/*
 * aprnet.h -- the whole C API of the napari-aprnet native library.
 *
 * Conventions
 *   - Arrays are C-contiguous, numpy axis order: (y, x) in 2D, (z, y, x) in 3D;
 *     x is the fastest axis. `shape` arguments are always int64_t[3] holding
 *     (nz, ny, nx) with nz = 1 for 2D images.
 *   - Every function returns an int status: APRNET_OK (0) or a negative error
 *     code below. Callers (napari_aprnet/_native.py) check bounds and shapes
 *     before calling, the C code checks again cheaply and never aborts.
 *   - Particle order: by level (coarse to fine), then row-major (z, y, x) at
 *     the particle's own level. Level l has ceil(n / 2^(level_max - l)) cells
 *     per axis. Interior tree nodes use the same order.
 *   - No function calls back into Python. Long functions poll `*cancel`
 *     (may be NULL) and return APRNET_ERR_CANCELLED when it becomes non-zero.
 *
 * Sections: each part of the library owns one section; add functions only
 * inside your own section.
 */
#ifndef APRNET_H
#define APRNET_H

#include <stdint.h>

#define APRNET_OK 0
#define APRNET_ERR_ARG -1
#define APRNET_ERR_NOMEM -2
#define APRNET_ERR_CANCELLED -3
#define APRNET_ERR_INTERNAL -4
#define APRNET_ERR_BOUNDS -5

/* ===== common (common.c) ===== */
const char *aprnet_version(void);
int aprnet_max_threads(void);
void aprnet_set_num_threads(int n);

/* ===== formation (formation*.c, pulling*.c) ===== */

/* ===== reconstruction and sampling (reconstruct*.c) ===== */

/* ===== network structure work (nn_*.c) ===== */

#endif /* APRNET_H */
