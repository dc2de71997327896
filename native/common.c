/* common.c -- version and thread control. */
#include "aprnet.h"
#ifdef _OPENMP
#include <omp.h>
#endif

const char *aprnet_version(void) { return "0.1.0"; }

int aprnet_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void aprnet_set_num_threads(int n) {
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads(n);
#else
    (void)n;
#endif
}
