/* The recurrent cells' elementwise math on one row's feature-major blocks (a gate block
   is n = H * B contiguous floats), shared by the per-step kernels (recurrent_kernels.c)
   and the per-row step (recurrent_rows.c). */
#ifndef RECURRENT_CELLS_H
#define RECURRENT_CELLS_H

#include <math.h>

/* tanh by Eigen's rational approximation (generic_fast_tanh_float): a few ulp from the
   true value, and branch-free so that the loops vectorize. A NaN stays NaN (every
   comparison with it is false), so a diverging row is still seen as diverging. */
static inline float fast_tanh(float x) {
    const float clamp = 7.99881172180175781f;
    float y = x > clamp ? clamp : (x < -clamp ? -clamp : x);
    float y2 = y * y;
    float p = -2.76076847742355e-16f;
    p = p * y2 + 2.00018790482477e-13f;
    p = p * y2 + -8.60467152213735e-11f;
    p = p * y2 + 5.12229709037114e-08f;
    p = p * y2 + 1.48572235717979e-05f;
    p = p * y2 + 6.37261928875436e-04f;
    p = p * y2 + 4.89352455891786e-03f;
    p = p * y;
    float q = 1.19825839466702e-06f;
    q = q * y2 + 1.18534705686654e-04f;
    q = q * y2 + 2.26843463243900e-03f;
    q = q * y2 + 4.89352518554385e-03f;
    float t = p / q;
    return fabsf(y) < 0.0004f ? y : t;
}

static inline float fast_sigmoid(float x) { return 0.5f + 0.5f * fast_tanh(0.5f * x); }

/* The loops take their branches as constant arguments (has_prev, carry): each inlined
   copy is branch-free and vectorizes. */
static inline void lstm_forward_row(float *restrict i, float *restrict f, float *restrict g,
                               float *restrict o, const float *restrict c_prev,
                               float *restrict c, float *restrict tanh_c, float *restrict h,
                               long n, const int has_prev) {
    for (long k = 0; k < n; k++) {
        float ii = fast_sigmoid(i[k]), ff = fast_sigmoid(f[k]);
        float gg = fast_tanh(g[k]), oo = fast_sigmoid(o[k]);
        float cc = has_prev ? ii * gg + ff * c_prev[k] : ii * gg;
        float tc = fast_tanh(cc);
        i[k] = ii; f[k] = ff; g[k] = gg; o[k] = oo;
        c[k] = cc; tanh_c[k] = tc; h[k] = oo * tc;
    }
}

static inline void lstm_backward_row(const float *restrict i, const float *restrict f,
                                const float *restrict g, const float *restrict o,
                                const float *restrict tanh_c, const float *restrict c_prev,
                                const float *restrict d_h, float *restrict d_c,
                                float *restrict d_i, float *restrict d_f, float *restrict d_g,
                                float *restrict d_o, long n, const int has_prev,
                                const int carry) {
    for (long k = 0; k < n; k++) {
        float ii = i[k], ff = f[k], gg = g[k], oo = o[k], tc = tanh_c[k], dh = d_h[k];
        float dc = dh * oo * (1.0f - tc * tc);
        if (carry) dc += d_c[k];
        d_i[k] = dc * gg * (ii * (1.0f - ii));
        d_f[k] = has_prev ? dc * c_prev[k] * (ff * (1.0f - ff)) : 0.0f;
        d_g[k] = dc * ii * (1.0f - gg * gg);
        d_o[k] = dh * tc * (oo * (1.0f - oo));
        d_c[k] = dc * ff;
    }
}

/* GRU, PyTorch's cell: r, z = sigmoid(x_r + W_hr h, x_z + W_hz h); h_n = W_hn h + b_hn;
   n = tanh(x_n + r h_n); h' = (1 - z) n + z h. */
static inline void gru_forward_row(float *restrict r, float *restrict z,
                                   const float *restrict x_n, const float *restrict rec,
                                   const float *restrict bias_hn,
                                   const float *restrict h_prev, float *restrict n_out,
                                   float *restrict h_n_out, float *restrict h, long hidden,
                                   long batch, const int has_prev) {
    long n = hidden * batch;
    for (long j = 0; j < hidden; j++) {
        float b_hn = bias_hn[j];
        for (long b = 0; b < batch; b++) {
            long k = j * batch + b;
            float xr = r[k], xz = z[k], hn = b_hn;
            if (has_prev) {
                xr += rec[k]; xz += rec[n + k]; hn += rec[2 * n + k];
            }
            float rr = fast_sigmoid(xr), zz = fast_sigmoid(xz);
            float nn = fast_tanh(x_n[k] + rr * hn);
            r[k] = rr; z[k] = zz;
            n_out[k] = nn; h_n_out[k] = hn;
            h[k] = has_prev ? nn + zz * (h_prev[k] - nn) : nn - zz * nn;
        }
    }
}

static inline void gru_backward_row(const float *restrict r, const float *restrict z,
                                    const float *restrict n_, const float *restrict h_n,
                                    const float *restrict h_prev, const float *restrict d_h,
                                    float *restrict d_r, float *restrict d_z,
                                    float *restrict d_n, float *restrict d_rec_r,
                                    float *restrict d_rec_z, float *restrict d_rec_n,
                                    float *restrict d_h_direct, long n, const int has_prev) {
    for (long k = 0; k < n; k++) {
        float rr = r[k], zz = z[k], nn = n_[k], dh = d_h[k];
        float dn = dh * (1.0f - zz) * (1.0f - nn * nn);  /* d (x_n + r h_n) */
        float dz = (has_prev ? dh * (h_prev[k] - nn) : -dh * nn) * (zz * (1.0f - zz));
        float dr = dn * h_n[k] * (rr * (1.0f - rr));
        d_r[k] = dr; d_z[k] = dz; d_n[k] = dn;
        d_rec_r[k] = dr; d_rec_z[k] = dz; d_rec_n[k] = dn * rr;
        d_h_direct[k] = dh * zz;
    }
}

#endif
