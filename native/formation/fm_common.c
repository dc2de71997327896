/* fm_common.c -- helpers shared by the formation sources: large buffers and
 * pixel loading. Declared in fm_common.h with the shared types and inline
 * helpers; nothing here calls back into the other formation sources. */
#define _DEFAULT_SOURCE /* madvise */
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "aprnet.h"
#include "fm_common.h"

#define FM_HUGE ((size_t)2 << 20)

void *aprnet_fm_alloc(size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= 2 * FM_HUGE) {
        void *p = NULL;
        if (posix_memalign(&p, FM_HUGE, bytes) != 0) return NULL;
        (void)madvise(p, bytes, MADV_HUGEPAGE); /* advisory: failure is harmless */
        return p;
    }
#endif
    return malloc(bytes ? bytes : 1);
}

void aprnet_fm_load_row(const void *image, int dtype, int64_t offset, int64_t n, float *out) {
    if (dtype == APRNET_DTYPE_U16) {
        const uint16_t *p = (const uint16_t *)image + offset;
        for (int64_t i = 0; i < n; ++i) out[i] = (float)p[i];
    } else if (dtype == APRNET_DTYPE_U8) {
        const uint8_t *p = (const uint8_t *)image + offset;
        for (int64_t i = 0; i < n; ++i) out[i] = (float)p[i];
    } else {
        memcpy(out, (const float *)image + offset, sizeof(float) * (size_t)n);
    }
}

void aprnet_fm_add_row(const void *image, int dtype, int64_t offset, int64_t n, float *out) {
    if (dtype == APRNET_DTYPE_U16) {
        const uint16_t *p = (const uint16_t *)image + offset;
        for (int64_t i = 0; i < n; ++i) out[i] += (float)p[i];
    } else if (dtype == APRNET_DTYPE_U8) {
        const uint8_t *p = (const uint8_t *)image + offset;
        for (int64_t i = 0; i < n; ++i) out[i] += (float)p[i];
    } else {
        const float *p = (const float *)image + offset;
        for (int64_t i = 0; i < n; ++i) out[i] += p[i];
    }
}
