/* The BLAS sgemm that torch itself links (MKL on x86 builds), for the kernels that run a
   whole step a row at a time (recurrent_rows.c). native.py finds its
   address in torch's library and hands it to set_sgemm at load. */
#include <stddef.h>

#include "blas.h"

/* The Fortran BLAS sgemm. Its integers are passed as 64-bit values: a 32-bit (LP64)
   BLAS reads their low halves, which on a little-endian CPU are the same numbers, and a
   64-bit (ILP64) one reads them whole, so either interface gets the right sizes. */
typedef void sgemm_t(const char *trans_a, const char *trans_b, const long *m, const long *n,
                     const long *k, const float *alpha, const float *a, const long *lda,
                     const float *b, const long *ldb, const float *beta, float *c,
                     const long *ldc);
static sgemm_t *sgemm;

/* Row-major c (m x n, leading dimension ldc) = op(a) op(b) + beta c, op transposing where
   t_a / t_b is set. BLAS is column-major, where a row-major matrix is its transpose: so
   this is c^T = op(b)^T op(a)^T there. */
void blas_gemm(int t_a, int t_b, long m, long n, long k, const float *a, long lda,
               const float *b, long ldb, float beta, float *c, long ldc) {
    const float one = 1.0f;
    sgemm(t_b ? "T" : "N", t_a ? "T" : "N", &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c,
          &ldc);
}

/* Takes the BLAS sgemm the products call, after checking it on a small product (a
   non-square one, with transposes and beta); returns whether it passed. */
int set_sgemm(void *function) {
    sgemm = (sgemm_t *)function;
    const float a[6] = {1, 2, 3, 4, 5, 6};     /* 2 x 3 */
    const float b[6] = {1, 0, -1, 2, 0.5f, 1}; /* 2 x 3 */
    float c[4] = {1, 1, 1, 1};
    blas_gemm(0, 1, 2, 2, 3, a, 3, b, 3, 1.0f, c, 2); /* c = a b^T + c */
    const float want[4] = {1 - 2, 1 + 2 + 1 + 3, 1 + 4 - 6, 1 + 8 + 2.5f + 6};
    for (int i = 0; i < 4; i++)
        if (c[i] != want[i]) {
            sgemm = NULL;
            return 0;
        }
    return 1;
}
