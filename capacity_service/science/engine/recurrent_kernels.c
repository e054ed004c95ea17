/* Elementwise work of the stacked recurrent steps, for float32 tensors on a CPU: the
   LSTM and GRU steps fused (forward and back), and the tanh RNN's activation.

   Layout is the engine's feature-major one (recurrent.py): a row's gate terms are
   contiguous blocks (the LSTM's i, f, g, o; the GRU's r, z, n) of n = H * B floats, its
   states one block of n. Torch spends about ten passes over memory per LSTM step, and
   this build's torch.tanh runs about 5 ns an element per thread (scalar); one vectorized
   pass with a rational tanh replaces them. Compiled and loaded at first use by
   native.py; where it cannot be, the engine runs the same steps in torch ops. */
#include <math.h>
#include <stddef.h>

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
static inline void forward_row(float *restrict i, float *restrict f, float *restrict g,
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

/* One step forward. gates (rows, 4, n): the gate terms, activated in place; c_prev
   (rows, n), NULL for the zero state; writes c, tanh(c) and h (rows, n). */
void lstm_forward(float *gates, const float *c_prev, float *c, float *tanh_c, float *h,
                  long rows, long n, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long r = 0; r < rows; r++) {
        long at = r * n;
        float *i = gates + 4 * at, *f = i + n, *g = f + n, *o = g + n;
        if (c_prev)
            forward_row(i, f, g, o, c_prev + at, c + at, tanh_c + at, h + at, n, 1);
        else
            forward_row(i, f, g, o, NULL, c + at, tanh_c + at, h + at, n, 0);
    }
}

static inline void backward_row(const float *restrict i, const float *restrict f,
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

/* One step back. gates (rows, 4, n): the activated gates; tanh_c and d_h (rows, n);
   c_prev (rows, n), NULL at t = 0; d_c (rows, n) holds d c_t from step t + 1 where carry
   is set (not read otherwise) and receives d c_(t-1); writes d_gates (rows, 4, n), the
   gradient of the gate terms. */
void lstm_backward(const float *gates, const float *tanh_c, const float *c_prev,
                   const float *d_h, float *d_c, int carry, float *d_gates, long rows, long n,
                   int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long r = 0; r < rows; r++) {
        long at = r * n;
        const float *i = gates + 4 * at, *f = i + n, *g = f + n, *o = g + n;
        float *di = d_gates + 4 * at, *df = di + n, *dg = df + n, *d_o = dg + n;
        const float *cp = c_prev ? c_prev + at : NULL;
        const float *tc = tanh_c + at, *dh = d_h + at;
        float *dc = d_c + at;
        if (c_prev && carry)
            backward_row(i, f, g, o, tc, cp, dh, dc, di, df, dg, d_o, n, 1, 1);
        else if (c_prev)
            backward_row(i, f, g, o, tc, cp, dh, dc, di, df, dg, d_o, n, 1, 0);
        else if (carry)
            backward_row(i, f, g, o, tc, cp, dh, dc, di, df, dg, d_o, n, 0, 1);
        else
            backward_row(i, f, g, o, tc, cp, dh, dc, di, df, dg, d_o, n, 0, 0);
    }
}

/* x = tanh(x) in place, for count floats (the tanh RNN's state). */
void tanh_inplace(float *x, long count, int threads) {
    const long block = 1 << 14;  /* 64 KiB a task: a few per thread on a step's state */
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long start = 0; start < count; start += block) {
        long end = start + block < count ? start + block : count;
        float *restrict y = x + start;
        for (long k = 0; k < end - start; k++) y[k] = fast_tanh(y[k]);
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

/* One step forward. gates (rows, 3, n): x_r, x_z, x_n (with their biases); r and z are
   activated in place, x_n is left. rec (rows, 3, n): W_hh h_(t-1), NULL (with h_prev) for
   the zero state; bias_hn (rows, hidden). Writes n, h_n = W_hn h + b_hn and h (rows, n). */
void gru_forward(float *gates, const float *rec, const float *bias_hn, const float *h_prev,
                 float *n_out, float *h_n_out, float *h, long rows, long hidden, long batch,
                 int threads) {
    long n = hidden * batch;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long row = 0; row < rows; row++) {
        long at = row * n;
        float *r = gates + 3 * at, *z = r + n, *x_n = z + n;
        const float *bias = bias_hn + row * hidden;
        if (h_prev)
            gru_forward_row(r, z, x_n, rec + 3 * at, bias, h_prev + at, n_out + at,
                            h_n_out + at, h + at, hidden, batch, 1);
        else
            gru_forward_row(r, z, x_n, NULL, bias, NULL, n_out + at, h_n_out + at, h + at,
                            hidden, batch, 0);
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

/* One step back. gates (rows, 3, n): activated r, z (the third block unread); n_, h_n,
   d_h (rows, n); h_prev (rows, n), NULL at t = 0. Writes d_gates (rows, 3, n), the
   gradient of the gate terms x_r, x_z, x_n; d_rec (rows, 3, n), that of W_hh h + [0, 0,
   b_hn]; and d_h_direct (rows, n), the part of d h_(t-1) that skips the products (d_h z). */
void gru_backward(const float *gates, const float *n_, const float *h_n, const float *h_prev,
                  const float *d_h, float *d_gates, float *d_rec, float *d_h_direct, long rows,
                  long n, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long row = 0; row < rows; row++) {
        long at = row * n;
        const float *r = gates + 3 * at, *z = r + n;
        float *dg = d_gates + 3 * at, *dr = d_rec + 3 * at;
        if (h_prev)
            gru_backward_row(r, z, n_ + at, h_n + at, h_prev + at, d_h + at, dg, dg + n,
                             dg + 2 * n, dr, dr + n, dr + 2 * n, d_h_direct + at, n, 1);
        else
            gru_backward_row(r, z, n_ + at, h_n + at, NULL, d_h + at, dg, dg + n, dg + 2 * n,
                             dr, dr + n, dr + 2 * n, d_h_direct + at, n, 0);
    }
}
