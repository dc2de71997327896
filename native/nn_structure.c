/* nn_structure.c -- deterministic row scatter-add of the APR layers.
 *
 * (The structure maps themselves are built per batch in nn_plan.c.)
 */
#include <stdlib.h>
#include <string.h>

#include "aprnet.h"

#define NN_PAR_WORK 65536 /* values moved below which work stays serial */
#ifdef _OPENMP
#include <omp.h>
#define NN_THREAD_IDS(nth, tid) do { nth = omp_get_num_threads(); tid = omp_get_thread_num(); } while (0)
#else
#define NN_THREAD_IDS(nth, tid) do { nth = 1; tid = 0; } while (0)
#endif

#define NN_SCATTER_ADD(NAME, T)                                                                  \
    int NAME(const T *src, int64_t n_rows, int64_t n_cols, const int32_t *index,                \
             T *dst, int64_t n_dst) {                                                           \
        if (n_rows < 0 || n_cols < 0 || n_dst < 0) return APRNET_ERR_ARG;                       \
        if (n_rows == 0 || n_cols == 0) return APRNET_OK;                                       \
        if (src == NULL || index == NULL || dst == NULL) return APRNET_ERR_ARG;                 \
        int bad = 0;                                                                            \
        _Pragma("omp parallel reduction(|:bad) if(n_rows * n_cols > NN_PAR_WORK)")                                                \
        {                                                                                       \
            int nth = 1, tid = 0;                                                               \
            NN_THREAD_IDS(nth, tid);                                                            \
            int64_t lo = n_dst * tid / nth, hi = n_dst * (tid + 1) / nth;                       \
            for (int64_t i = 0; i < n_rows; i++) {                                              \
                int64_t j = index[i];                                                           \
                if (j < 0 || j >= n_dst) { bad |= 1; continue; }                                \
                if (j < lo || j >= hi) continue;                                                \
                const T *s = src + i * n_cols;                                                  \
                T *d = dst + j * n_cols;                                                        \
                for (int64_t c = 0; c < n_cols; c++) d[c] += s[c];                              \
            }                                                                                   \
        }                                                                                       \
        return bad ? APRNET_ERR_BOUNDS : APRNET_OK;                                             \
    }

/* dst[index[i]] += src[i] for rows i. Each thread owns a contiguous block of
 * destination rows and visits the sources in order, so every destination row
 * receives its contributions in the same order for any number of threads. */
NN_SCATTER_ADD(aprnet_nn_scatter_add_f32, float)
NN_SCATTER_ADD(aprnet_nn_scatter_add_f64, double)
