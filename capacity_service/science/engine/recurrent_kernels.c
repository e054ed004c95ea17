/* Elementwise work of the stacked recurrent steps, for float32 tensors on a CPU: the
   LSTM and GRU steps fused (forward and back), and the tanh RNN's activation.

   Layout is the engine's feature-major one (recurrent.py): a row's gate terms are
   contiguous blocks (the LSTM's i, f, g, o; the GRU's r, z, n) of n = H * B floats, its
   states one block of n. Torch spends about ten passes over memory per LSTM step, and
   this build's torch.tanh runs about 5 ns an element per thread (scalar); one vectorized
   pass with a rational tanh replaces them. Compiled and loaded at first use by
   native.py; where it cannot be, the engine runs the same steps in torch ops. */
#include <stddef.h>

#include "recurrent_cells.h"

/* One step forward. gates (rows, 4, n): the gate terms, activated in place; c_prev
   (rows, n), NULL for the zero state; writes c, tanh(c) and h (rows, n). */
void lstm_forward(float *gates, const float *c_prev, float *c, float *tanh_c, float *h,
                  long rows, long n, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long r = 0; r < rows; r++) {
        long at = r * n;
        float *i = gates + 4 * at, *f = i + n, *g = f + n, *o = g + n;
        if (c_prev)
            lstm_forward_row(i, f, g, o, c_prev + at, c + at, tanh_c + at, h + at, n, 1);
        else
            lstm_forward_row(i, f, g, o, NULL, c + at, tanh_c + at, h + at, n, 0);
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
            lstm_backward_row(i, f, g, o, tc, cp, dh, dc, di, df, dg, d_o, n, 1, 1);
        else if (c_prev)
            lstm_backward_row(i, f, g, o, tc, cp, dh, dc, di, df, dg, d_o, n, 1, 0);
        else if (carry)
            lstm_backward_row(i, f, g, o, tc, cp, dh, dc, di, df, dg, d_o, n, 0, 1);
        else
            lstm_backward_row(i, f, g, o, tc, cp, dh, dc, di, df, dg, d_o, n, 0, 0);
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
