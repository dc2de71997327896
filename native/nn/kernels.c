/* nn/kernels.c -- numeric helpers of the APR layers (CPU path).
 *
 * Deterministic row scatter-add (the structure maps themselves are built per
 * batch in nn/plan.c), tree filling (mean of children) and its adjoint (gradient split evenly
 * among children). Every output row is written by exactly one iteration, so
 * results do not depend on the number of OpenMP threads.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aprnet.h"

#define NN_PAR_WORK 65536 /* values moved below which loops stay serial (a parallel region costs more) */

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

#define NN_TREE_MEAN(NAME, T)                                                                    \
    int NAME(T *values, int64_t n_values, int64_t n_cols, const int64_t *rows,                  \
             const int64_t *children, int64_t n_rows, int n_children, int64_t zero_index) {     \
        if (n_values < 0 || n_cols < 0 || n_rows < 0 || n_children < 1 || n_children > 8)       \
            return APRNET_ERR_ARG;                                                              \
        if (n_rows == 0 || n_cols == 0) return APRNET_OK;                                       \
        if (values == NULL || rows == NULL || children == NULL) return APRNET_ERR_ARG;          \
        int bad = 0;                                                                            \
        _Pragma("omp parallel for schedule(dynamic, 256) reduction(|:bad) if(n_rows * n_cols * n_children > NN_PAR_WORK)")   \
        for (int64_t i = 0; i < n_rows; i++) {                                                  \
            int64_t r = rows[i];                                                                \
            if (r < 0 || r >= n_values) { bad |= 1; continue; }                                 \
            T *dst = values + r * n_cols;                                                       \
            for (int64_t c = 0; c < n_cols; c++) dst[c] = 0;                                    \
            int count = 0;                                                                      \
            for (int j = 0; j < n_children; j++) {                                              \
                int64_t ch = children[i * n_children + j];                                      \
                if (ch < 0 || ch >= n_values) { bad |= 1; continue; }                           \
                if (ch == zero_index) continue;                                                 \
                const T *src = values + ch * n_cols;                                            \
                for (int64_t c = 0; c < n_cols; c++) dst[c] += src[c];                          \
                count++;                                                                        \
            }                                                                                   \
            if (count > 1) {                                                                    \
                T inv = (T)1 / (T)count;                                                        \
                for (int64_t c = 0; c < n_cols; c++) dst[c] *= inv;                             \
            }                                                                                   \
        }                                                                                       \
        return bad ? APRNET_ERR_BOUNDS : APRNET_OK;                                             \
    }

#define NN_TREE_SPREAD(NAME, T)                                                                  \
    int NAME(T *grad, int64_t n_values, int64_t n_cols, const int64_t *rows,                    \
             const int64_t *children, int64_t n_rows, int n_children, int64_t zero_index) {     \
        if (n_values < 0 || n_cols < 0 || n_rows < 0 || n_children < 1 || n_children > 8)       \
            return APRNET_ERR_ARG;                                                              \
        if (n_rows == 0 || n_cols == 0) return APRNET_OK;                                       \
        if (grad == NULL || rows == NULL || children == NULL) return APRNET_ERR_ARG;            \
        int bad = 0;                                                                            \
        _Pragma("omp parallel for schedule(dynamic, 256) reduction(|:bad) if(n_rows * n_cols * n_children > NN_PAR_WORK)")   \
        for (int64_t i = 0; i < n_rows; i++) {                                                  \
            int64_t r = rows[i];                                                                \
            if (r < 0 || r >= n_values) { bad |= 1; continue; }                                 \
            int count = 0;                                                                      \
            for (int j = 0; j < n_children; j++) {                                              \
                int64_t ch = children[i * n_children + j];                                      \
                if (ch < 0 || ch >= n_values) { bad |= 1; continue; }                           \
                if (ch != zero_index) count++;                                                  \
            }                                                                                   \
            if (count == 0) continue;                                                           \
            T inv = (T)1 / (T)count;                                                            \
            const T *src = grad + r * n_cols;                                                   \
            for (int j = 0; j < n_children; j++) {                                              \
                int64_t ch = children[i * n_children + j];                                      \
                if (ch < 0 || ch >= n_values || ch == zero_index) continue;                     \
                T *dst = grad + ch * n_cols;                                                    \
                for (int64_t c = 0; c < n_cols; c++) dst[c] += src[c] * inv;                    \
            }                                                                                   \
        }                                                                                       \
        return bad ? APRNET_ERR_BOUNDS : APRNET_OK;                                             \
    }

NN_TREE_MEAN(aprnet_nn_tree_mean_f32, float)
NN_TREE_MEAN(aprnet_nn_tree_mean_f64, double)
NN_TREE_SPREAD(aprnet_nn_tree_spread_f32, float)
NN_TREE_SPREAD(aprnet_nn_tree_spread_f64, double)

/* Max pooling (APRMaxPool). Forward: out[pass_dst[i]] = x[pass_src[i]] and
 * out[pool_dst[i], c] = max_j x[children[i, j], c], the first maximum in
 * child order (a NaN wins, as in torch.max); argsrc[i, c] (optional) receives
 * the input row of that maximum. Backward: grad_x[pass_src[i]] = grad[pass_dst[i]],
 * grad_x[argsrc[i, c], c] = grad[pool_dst[i], c] (grad_x zeroed by the caller).
 * Every output element is written by one iteration. */
#define NN_POOL(SUF, T)                                                                                     \
    int aprnet_nn_pool_forward_##SUF(const T *x, int64_t n, int64_t n_cols, const int64_t *pass_src,      \
                                     const int64_t *pass_dst, int64_t n_pass, const int64_t *pool_dst,    \
                                     const int64_t *children, int64_t n_pool, int n_children, T *out,     \
                                     int64_t n_out, int32_t *argsrc) {                                    \
        if (n < 0 || n_cols < 1 || n_pass < 0 || n_pool < 0 || n_out < 0 || n_children < 1 ||           \
            n_children > 8 || n > 2147483647LL)                                                          \
            return APRNET_ERR_ARG;                                                                       \
        if ((n_pass > 0 && (!x || !pass_src || !pass_dst || !out)) ||                                    \
            (n_pool > 0 && (!x || !pool_dst || !children || !out)))                                      \
            return APRNET_ERR_ARG;                                                                       \
        int bad = 0;                                                                                     \
        _Pragma("omp parallel for schedule(static) reduction(|:bad) if(n_pass * n_cols > 65536)")        \
        for (int64_t i = 0; i < n_pass; i++) {                                                           \
            int64_t s = pass_src[i], d = pass_dst[i];                                                    \
            if (s < 0 || s >= n || d < 0 || d >= n_out) { bad |= 1; continue; }                          \
            for (int64_t c = 0; c < n_cols; c++) out[d * n_cols + c] = x[s * n_cols + c];                \
        }                                                                                                \
        _Pragma("omp parallel for schedule(static) reduction(|:bad) if(n_pool * n_cols > 16384)")        \
        for (int64_t i = 0; i < n_pool; i++) {                                                           \
            int64_t d = pool_dst[i];                                                                     \
            const int64_t *ch = children + i * n_children;                                               \
            int ok = d >= 0 && d < n_out;                                                                \
            for (int j = 0; j < n_children; j++) ok &= ch[j] >= 0 && ch[j] < n;                          \
            if (!ok) { bad |= 1; continue; }                                                             \
            T *o = out + d * n_cols;                                                                     \
            int32_t *a = argsrc ? argsrc + i * n_cols : NULL;                                            \
            const T *x0 = x + ch[0] * n_cols;                                                            \
            for (int64_t c = 0; c < n_cols; c++) o[c] = x0[c];                                           \
            if (a)                                                                                       \
                for (int64_t c = 0; c < n_cols; c++) a[c] = (int32_t)ch[0];                              \
            for (int j = 1; j < n_children; j++) {                                                       \
                const T *xj = x + ch[j] * n_cols;                                                        \
                for (int64_t c = 0; c < n_cols; c++) {                                                   \
                    T v = xj[c];                                                                         \
                    if (v > o[c] || (v != v && o[c] == o[c])) {                                          \
                        o[c] = v;                                                                        \
                        if (a) a[c] = (int32_t)ch[j];                                                    \
                    }                                                                                    \
                }                                                                                        \
            }                                                                                            \
        }                                                                                                \
        return bad ? APRNET_ERR_BOUNDS : APRNET_OK;                                                      \
    }                                                                                                    \
                                                                                                         \
    int aprnet_nn_pool_backward_##SUF(const T *grad, int64_t n_out, int64_t n_cols, const int64_t *pass_src, \
                                      const int64_t *pass_dst, int64_t n_pass, const int64_t *pool_dst,   \
                                      const int32_t *argsrc, int64_t n_pool, T *grad_x, int64_t n) {      \
        if (n < 0 || n_cols < 1 || n_pass < 0 || n_pool < 0 || n_out < 0) return APRNET_ERR_ARG;         \
        if ((n_pass > 0 && (!grad || !pass_src || !pass_dst || !grad_x)) ||                              \
            (n_pool > 0 && (!grad || !pool_dst || !argsrc || !grad_x)))                                  \
            return APRNET_ERR_ARG;                                                                       \
        int bad = 0;                                                                                     \
        _Pragma("omp parallel for schedule(static) reduction(|:bad) if(n_pass * n_cols > 65536)")        \
        for (int64_t i = 0; i < n_pass; i++) {                                                           \
            int64_t s = pass_src[i], d = pass_dst[i];                                                    \
            if (s < 0 || s >= n || d < 0 || d >= n_out) { bad |= 1; continue; }                          \
            for (int64_t c = 0; c < n_cols; c++) grad_x[s * n_cols + c] = grad[d * n_cols + c];          \
        }                                                                                                \
        _Pragma("omp parallel for schedule(static) reduction(|:bad) if(n_pool * n_cols > 16384)")        \
        for (int64_t i = 0; i < n_pool; i++) {                                                           \
            int64_t d = pool_dst[i];                                                                     \
            if (d < 0 || d >= n_out) { bad |= 1; continue; }                                             \
            const int32_t *a = argsrc + i * n_cols;                                                      \
            for (int64_t c = 0; c < n_cols; c++) {                                                       \
                int64_t s = a[c];                                                                        \
                if (s < 0 || s >= n) { bad |= 1; continue; }                                             \
                grad_x[s * n_cols + c] = grad[d * n_cols + c];                                           \
            }                                                                                            \
        }                                                                                                \
        return bad ? APRNET_ERR_BOUNDS : APRNET_OK;                                                      \
    }

NN_POOL(f32, float)
NN_POOL(f64, double)
