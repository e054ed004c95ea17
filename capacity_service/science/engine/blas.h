/* Row-major products by the BLAS sgemm that torch links (blas.c). */
#ifndef BLAS_H
#define BLAS_H

/* c (m x n, row-major, leading dimension ldc) = op(a) op(b) + beta c, op transposing
   where t_a / t_b is set; set_sgemm must have succeeded. */
void blas_gemm(int t_a, int t_b, long m, long n, long k, const float *a, long lda,
               const float *b, long ldb, float beta, float *c, long ldc);

#endif
