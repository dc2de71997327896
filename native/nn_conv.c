/* nn_conv.c -- fused CPU kernels of the APR convolution (rulebook based).
 *
 * A rulebook row holds, for one particle, the index of the value feeding each
 * of the K stencil offsets in a value table [particles | tree nodes | zero].
 * Weights are laid out (K, c_in, c_out).
 *   forward:        out[i] = bias + sum_o values[rb[i, o]] @ weight[o]
 *   weight grad:    gw[o] += sum_i values[rb[i, o]]^T grad_out[i]
 *   value grad:     gv[rb[i, o]] += weight[o] @ grad_out[i]
 * Determinism: the forward writes disjoint rows; the weight gradient sums
 * fixed blocks of particles (independent of the thread count) and adds the
 * block partials in order; the value gradient gives every thread a fixed
 * range of destination rows and visits contributions in (i, o) order.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aprnet.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define NN_CONV_PAR_MIN 256
#define NN_CONV_BLOCKS 32      /* max particle blocks of the weight gradient */
#define NN_CONV_BLOCK_MIN 1024 /* min particles per block */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define NN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NN_CLONES
#endif

static int nn_rb_ok(const int32_t *rb, int64_t count, int64_t n_values) {
    int bad = 0;
    #pragma omp parallel for schedule(static) reduction(|:bad) if(count > 65536)
    for (int64_t j = 0; j < count; j++)
        if (rb[j] < 0 || rb[j] >= n_values) bad |= 1;
    return !bad;
}

#define NN_CONV_KERNELS(SUF, T)                                                                          \
    NN_CLONES static void nn_fwd_row_##SUF(const T *values, int64_t cin, const int32_t *rbi, int64_t K, \
                                           const T *weight, int64_t cout, const T *bias, T *acc) {      \
        for (int64_t d = 0; d < cout; d++) acc[d] = bias ? bias[d] : (T)0;                              \
        for (int64_t o = 0; o < K; o++) {                                                               \
            const T *v = values + (int64_t)rbi[o] * cin;                                                \
            const T *w = weight + o * cin * cout;                                                       \
            for (int64_t c = 0; c < cin; c++) {                                                         \
                const T vc = v[c];                                                                      \
                const T *wr = w + c * cout;                                                             \
                for (int64_t d = 0; d < cout; d++) acc[d] += vc * wr[d];                                \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
                                                                                                        \
    int aprnet_nn_conv_forward_##SUF(const T *values, int64_t n_values, int64_t cin,                    \
                                     const int32_t *rulebook, int64_t n, int64_t K, const T *weight,    \
                                     int64_t cout, const T *bias, T *out) {                             \
        if (n_values < 1 || cin < 1 || n < 0 || K < 1 || cout < 1) return APRNET_ERR_ARG;               \
        if (n == 0) return APRNET_OK;                                                                   \
        if (!values || !rulebook || !weight || !out) return APRNET_ERR_ARG;                             \
        if (!nn_rb_ok(rulebook, n * K, n_values)) return APRNET_ERR_BOUNDS;                             \
        int fail = 0;                                                                                   \
        _Pragma("omp parallel if(n > NN_CONV_PAR_MIN) reduction(|:fail)")                               \
        {                                                                                               \
            T *acc = (T *)malloc((size_t)cout * sizeof(T));                                             \
            if (acc == NULL) fail |= 1;                                                                 \
            _Pragma("omp for schedule(static)")                                                         \
            for (int64_t i = 0; i < n; i++) {                                                           \
                if (acc == NULL) continue;                                                              \
                nn_fwd_row_##SUF(values, cin, rulebook + i * K, K, weight, cout, bias, acc);            \
                memcpy(out + i * cout, acc, (size_t)cout * sizeof(T));                                  \
            }                                                                                           \
            free(acc);                                                                                  \
        }                                                                                               \
        return fail ? APRNET_ERR_NOMEM : APRNET_OK;                                                     \
    }                                                                                                   \
                                                                                                        \
    NN_CLONES static void nn_gw_block_##SUF(const T *values, int64_t cin, const int32_t *rulebook,      \
                                            int64_t lo, int64_t hi, int64_t K, int64_t o,               \
                                            const T *grad_out, int64_t cout, T *gw) {                   \
        memset(gw, 0, (size_t)(cin * cout) * sizeof(T));                                                \
        for (int64_t i = lo; i < hi; i++) {                                                             \
            const T *v = values + (int64_t)rulebook[i * K + o] * cin;                                   \
            const T *g = grad_out + i * cout;                                                           \
            for (int64_t c = 0; c < cin; c++) {                                                         \
                const T vc = v[c];                                                                      \
                T *row = gw + c * cout;                                                                 \
                for (int64_t d = 0; d < cout; d++) row[d] += vc * g[d];                                 \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
                                                                                                        \
    int aprnet_nn_conv_grad_weight_##SUF(const T *values, int64_t n_values, int64_t cin,                \
                                         const int32_t *rulebook, int64_t n, int64_t K,                 \
                                         const T *grad_out, int64_t cout, T *grad_weight) {             \
        if (n_values < 1 || cin < 1 || n < 0 || K < 1 || cout < 1) return APRNET_ERR_ARG;               \
        if (n == 0) return APRNET_OK;                                                                   \
        if (!values || !rulebook || !grad_out || !grad_weight) return APRNET_ERR_ARG;                   \
        if (!nn_rb_ok(rulebook, n * K, n_values)) return APRNET_ERR_BOUNDS;                             \
        int64_t nblk = (n + NN_CONV_BLOCK_MIN - 1) / NN_CONV_BLOCK_MIN;                                 \
        if (nblk > NN_CONV_BLOCKS) nblk = NN_CONV_BLOCKS;                                               \
        const int64_t wsz = cin * cout;                                                                 \
        T *part = (T *)malloc((size_t)(nblk * K * wsz) * sizeof(T));                                    \
        if (part == NULL) return APRNET_ERR_NOMEM;                                                      \
        _Pragma("omp parallel for schedule(dynamic, 1) if(n * K > NN_CONV_PAR_MIN)")                    \
        for (int64_t task = 0; task < nblk * K; task++) {                                               \
            int64_t b = task / K, o = task % K;                                                         \
            int64_t lo = n * b / nblk, hi = n * (b + 1) / nblk;                                         \
            nn_gw_block_##SUF(values, cin, rulebook, lo, hi, K, o, grad_out, cout,                      \
                              part + (b * K + o) * wsz);                                                \
        }                                                                                               \
        _Pragma("omp parallel for schedule(static) if(K * wsz > 65536)")                                \
        for (int64_t e = 0; e < K * wsz; e++) {                                                         \
            T s = grad_weight[e];                                                                       \
            for (int64_t b = 0; b < nblk; b++) s += part[b * K * wsz + e];                              \
            grad_weight[e] = s;                                                                         \
        }                                                                                               \
        free(part);                                                                                     \
        return APRNET_OK;                                                                               \
    }                                                                                                   \
                                                                                                        \
    NN_CLONES static void nn_gv_range_##SUF(const T *grad_out, int64_t n, int64_t cout,                 \
                                            const int32_t *rulebook, int64_t K, const T *weight,        \
                                            int64_t cin, T *grad_values, int64_t lo, int64_t hi,        \
                                            int64_t skip) {                                             \
        for (int64_t i = 0; i < n; i++) {                                                               \
            const int32_t *rbi = rulebook + i * K;                                                      \
            const T *g = grad_out + i * cout;                                                           \
            for (int64_t o = 0; o < K; o++) {                                                           \
                int64_t t = rbi[o];                                                                     \
                if (t < lo || t >= hi || t == skip) continue;                                           \
                T *dst = grad_values + t * cin;                                                         \
                const T *w = weight + o * cin * cout;                                                   \
                for (int64_t c = 0; c < cin; c++) {                                                     \
                    const T *wr = w + c * cout;                                                         \
                    T s = 0;                                                                            \
                    for (int64_t d = 0; d < cout; d++) s += wr[d] * g[d];                               \
                    dst[c] += s;                                                                        \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
                                                                                                        \
    int aprnet_nn_conv_grad_values_##SUF(const T *grad_out, int64_t n, int64_t cout,                    \
                                         const int32_t *rulebook, int64_t K, const T *weight,           \
                                         int64_t cin, T *grad_values, int64_t n_values,                 \
                                         int64_t skip_index) {                                          \
        if (n_values < 1 || cin < 1 || n < 0 || K < 1 || cout < 1) return APRNET_ERR_ARG;               \
        if (n == 0) return APRNET_OK;                                                                   \
        if (!grad_out || !rulebook || !weight || !grad_values) return APRNET_ERR_ARG;                   \
        if (!nn_rb_ok(rulebook, n * K, n_values)) return APRNET_ERR_BOUNDS;                             \
        _Pragma("omp parallel if(n * K > NN_CONV_PAR_MIN)")                                             \
        {                                                                                               \
            int nth = 1, tid = 0;                                                                       \
            NN_CONV_IDS(nth, tid);                                                                      \
            int64_t lo = n_values * tid / nth, hi = n_values * (tid + 1) / nth;                         \
            nn_gv_range_##SUF(grad_out, n, cout, rulebook, K, weight, cin, grad_values, lo, hi,         \
                              skip_index);                                                              \
        }                                                                                               \
        return APRNET_OK;                                                                               \
    }

#ifdef _OPENMP
#define NN_CONV_IDS(nth, tid) do { nth = omp_get_num_threads(); tid = omp_get_thread_num(); } while (0)
#else
#define NN_CONV_IDS(nth, tid) do { nth = 1; tid = 0; } while (0)
#endif

NN_CONV_KERNELS(f32, float)
NN_CONV_KERNELS(f64, double)
