/* nn_kernels.c -- numeric helpers of the APR layers (CPU path).
 *
 * Tree filling (mean of children) and its adjoint (gradient split evenly
 * among children). Every output row is written by exactly one iteration, so
 * results do not depend on the number of OpenMP threads.
 */
#include <stddef.h>
#include <stdint.h>

#include "aprnet.h"

#define NN_PAR_MIN 512 /* rows below which loops stay serial */

#define NN_TREE_MEAN(NAME, T)                                                                    \
    int NAME(T *values, int64_t n_values, int64_t n_cols, const int64_t *rows,                  \
             const int64_t *children, int64_t n_rows, int n_children, int64_t zero_index) {     \
        if (n_values < 0 || n_cols < 0 || n_rows < 0 || n_children < 1 || n_children > 8)       \
            return APRNET_ERR_ARG;                                                              \
        if (n_rows == 0 || n_cols == 0) return APRNET_OK;                                       \
        if (values == NULL || rows == NULL || children == NULL) return APRNET_ERR_ARG;          \
        int bad = 0;                                                                            \
        _Pragma("omp parallel for schedule(dynamic, 256) reduction(|:bad) if(n_rows > NN_PAR_MIN)")   \
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
        _Pragma("omp parallel for schedule(dynamic, 256) reduction(|:bad) if(n_rows > NN_PAR_MIN)")   \
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
