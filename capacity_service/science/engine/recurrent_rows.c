/* A stacked LSTM, GRU or tanh RNN's whole training gradient and its logits, one row
   (trial) at a time, for float32 tensors on a CPU.

   The torch-op step (recurrent.py) runs every row's step t together: each product is one
   batched matrix product over all rows and each activation one pass over all rows'
   gates, so a step's gates (rows x 4H x B floats, 2 MiB for LSTM-32 at K = 32, B = 128)
   travel through the L3 cache between its dozen calls. Here one thread takes one row (or a
   block of up to BLOCK of its samples) through every step forward and back with all of
   its activations in scratch (about 0.6 MiB for that LSTM), so they stay in its core's L2
   cache; the products are the BLAS sgemm that torch itself links (blas.c; it runs on one
   thread, inside the OpenMP team). OpenMP runs rows in parallel, or, for fewer rows than
   threads, parts of each row's batch, summed after (row_parts.h).

   Layout of one block of nb samples is the torch-op step's feature-major one: a gate
   term is a (G H) x nb matrix, a state an H x nb one, so the cells' elementwise math
   (recurrent_cells.h) is shared. Parameters of row r, in models.RNN's order:
   w_ih (G H, n_in), w_hh (G H, H), bias (G H), the GRU's b_hn (H), w_out (2, H), b_out (2).
   A row's gradient is laid out the same, flat. Compiled and loaded by native.py. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "recurrent_cells.h"
#include "row_parts.h"

enum { LSTM = 0, GRU = 1, TANH = 2 };
enum { BLOCK = 128 }; /* samples a thread takes through the steps at once */

typedef struct {
    int kind;
    long gates, hidden, n_in, steps;
    long sizes[6]; /* floats of each parameter of one row, in order */
    int params;    /* 5, or 6 with the GRU's b_hn */
    long row_params;
} Net;

static void describe(Net *net, int kind, long hidden, long n_in, long steps) {
    net->kind = kind;
    net->gates = kind == LSTM ? 4 : (kind == GRU ? 3 : 1);
    net->hidden = hidden;
    net->n_in = n_in;
    net->steps = steps;
    long gh = net->gates * hidden;
    int p = 0;
    net->sizes[p++] = gh * n_in;
    net->sizes[p++] = gh * hidden;
    net->sizes[p++] = gh;
    if (kind == GRU) net->sizes[p++] = hidden;
    net->sizes[p++] = 2 * hidden;
    net->sizes[p++] = 2;
    net->params = p;
    net->row_params = 0;
    for (int i = 0; i < p; i++) net->row_params += net->sizes[i];
}

/* Row r's parameters (or a flat gradient's parts): w_ih, w_hh, bias, b_hn (NULL but for
   the GRU), w_out, b_out. */
typedef struct {
    float *w_ih, *w_hh, *bias, *b_hn, *w_out, *b_out;
} Params;

static Params stacked_params(const Net *net, float *const *params, long r) {
    float *row[6];
    for (int i = 0; i < net->params; i++) row[i] = params[i] + r * net->sizes[i];
    Params p = {row[0], row[1], row[2], NULL, row[net->params - 2], row[net->params - 1]};
    if (net->kind == GRU) p.b_hn = row[3];
    return p;
}

static Params flat_params(const Net *net, float *flat) {
    float *row[6];
    for (int i = 0; i < net->params; i++) {
        row[i] = flat;
        flat += net->sizes[i];
    }
    Params p = {row[0], row[1], row[2], NULL, row[net->params - 2], row[net->params - 1]};
    if (net->kind == GRU) p.b_hn = row[3];
    return p;
}

/* One thread's activations for a block of up to BLOCK samples, every step kept for the
   backward pass. gates: each step's gate terms, activated (the tanh RNN's: h_t itself);
   a, b, h: each step's states (LSTM: c, tanh c, h; GRU: n, W_hn h + b_hn, h). */
typedef struct {
    float *block;
    float *gates, *a, *b, *h;
    float *rec, *d_gates, *d_rec, *d_h, *d_carry, *logit0, *logit1, *d_logit;
} Scratch;

static int scratch_init(Scratch *s, const Net *net) {
    long gh = net->gates * net->hidden * BLOCK, hb = net->hidden * BLOCK;
    long steps = net->steps;
    long floats = steps * gh + 3 * steps * hb + 3 * gh + 2 * hb + 3 * BLOCK;
    s->block = malloc(sizeof(float) * floats);
    if (!s->block) return 0;
    float *at = s->block;
    s->gates = at, at += steps * gh;
    s->a = at, at += steps * hb;
    s->b = at, at += steps * hb;
    s->h = at, at += steps * hb;
    s->rec = at, at += gh;
    s->d_gates = at, at += gh;
    s->d_rec = at, at += gh;
    s->d_h = at, at += hb;
    s->d_carry = at, at += hb;
    s->logit0 = at, at += BLOCK;
    s->logit1 = at, at += BLOCK;
    s->d_logit = at;
    return 1;
}

/* Every thread's scratch, made before the parallel region (every thread of the team must
   reach its `omp for`, so none may bail out inside); NULL where memory ran out. */
static Scratch *scratch_all(const Net *net, int threads) {
    Scratch *all = calloc((size_t)threads, sizeof(Scratch));
    if (!all) return NULL;
    for (int t = 0; t < threads; t++)
        if (!scratch_init(&all[t], net)) {
            for (int u = 0; u < t; u++) free(all[u].block);
            free(all);
            return NULL;
        }
    return all;
}

static void scratch_free(Scratch *all, int threads) {
    for (int t = 0; t < threads; t++) free(all[t].block);
    free(all);
}

/* Forward through every step for nb samples x (nb rows of `x_stride` floats: step t's
   input at t * n_in); leaves the activations in s and returns h_T (H x nb). */
static const float *forward(const Net *net, const Params *w, const float *x, long x_stride,
                            long nb, Scratch *s) {
    long hidden = net->hidden, gh = net->gates * hidden, n = hidden * nb;
    const float *h_prev = NULL;
    for (long t = 0; t < net->steps; t++) {
        float *g = s->gates + t * gh * nb;
        for (long j = 0; j < gh; j++)
            for (long b = 0; b < nb; b++) g[j * nb + b] = w->bias[j];
        blas_gemm(0, 1, gh, nb, net->n_in, w->w_ih, net->n_in, x + t * net->n_in, x_stride,
                  1.0f, g, nb);
        float *a = s->a + t * n, *bb = s->b + t * n, *h = s->h + t * n;
        if (net->kind == LSTM) {
            if (h_prev)
                blas_gemm(0, 0, gh, nb, hidden, w->w_hh, hidden, h_prev, nb, 1.0f, g, nb);
            if (h_prev)
                lstm_forward_row(g, g + n, g + 2 * n, g + 3 * n, a - n, a, bb, h, n, 1);
            else
                lstm_forward_row(g, g + n, g + 2 * n, g + 3 * n, NULL, a, bb, h, n, 0);
        } else if (net->kind == GRU) {
            if (h_prev) {
                blas_gemm(0, 0, gh, nb, hidden, w->w_hh, hidden, h_prev, nb, 0.0f, s->rec, nb);
                gru_forward_row(g, g + n, g + 2 * n, s->rec, w->b_hn, h_prev, a, bb, h, hidden,
                                nb, 1);
            } else {
                gru_forward_row(g, g + n, g + 2 * n, NULL, w->b_hn, NULL, a, bb, h, hidden, nb,
                                0);
            }
        } else {
            if (h_prev)
                blas_gemm(0, 0, gh, nb, hidden, w->w_hh, hidden, h_prev, nb, 1.0f, g, nb);
            for (long k = 0; k < n; k++) g[k] = fast_tanh(g[k]);
            h = g; /* the tanh RNN's state is its activated gate term */
        }
        h_prev = h;
    }
    return h_prev;
}

/* logit0, logit1 (nb) of the last state h (H x nb). */
static void logits(const Net *net, const Params *w, const float *h, long nb, Scratch *s) {
    float *l0 = s->logit0, *l1 = s->logit1;
    for (long b = 0; b < nb; b++) l0[b] = w->b_out[0], l1[b] = w->b_out[1];
    for (long k = 0; k < net->hidden; k++) {
        float w0 = w->w_out[k], w1 = w->w_out[net->hidden + k];
        const float *hk = h + k * nb;
        for (long b = 0; b < nb; b++) l0[b] += w0 * hk[b], l1[b] += w1 * hk[b];
    }
}

static inline void row_sums(const float *m, long rows, long cols, float *into) {
    for (long j = 0; j < rows; j++) {
        float sum = 0.0f;
        for (long b = 0; b < cols; b++) sum += m[j * cols + b];
        into[j] += sum;
    }
}

/* Adds the gradient of the weighted cross-entropy of nb samples to g: forward, the output
   layer, then back through time. d: each sample's d logit_1 (d logit_0 = -d). */
static void backward(const Net *net, const Params *w, const Params *g, const float *x,
                     long x_stride, long nb, Scratch *s, const float *d) {
    long hidden = net->hidden, gh = net->gates * hidden, n = hidden * nb;
    long last = net->steps - 1;
    const float *h_last = s->h + last * n;
    if (net->kind == TANH) h_last = s->gates + last * gh * nb;
    /* output layer: logits = w_out h + b_out, d logits = (-d, d) */
    float d_sum = 0.0f;
    for (long b = 0; b < nb; b++) d_sum += d[b];
    g->b_out[0] -= d_sum, g->b_out[1] += d_sum;
    float *d_h = s->d_h;
    for (long k = 0; k < hidden; k++) {
        const float *hk = h_last + k * nb;
        float sum = 0.0f, dw = w->w_out[hidden + k] - w->w_out[k];
        for (long b = 0; b < nb; b++) sum += d[b] * hk[b], d_h[k * nb + b] = dw * d[b];
        g->w_out[k] -= sum, g->w_out[hidden + k] += sum;
    }
    float *d_g = s->d_gates, *other = s->d_carry;
    for (long t = last; t >= 0; t--) {
        const float *gt = s->gates + t * gh * nb;
        const float *x_t = x + t * net->n_in;
        int has_prev = t > 0;
        const float *h_prev = NULL;
        if (has_prev) h_prev = net->kind == TANH ? gt - gh * nb : s->h + (t - 1) * n;
        const float *d_rec = d_g; /* the gradient through W_hh h_(t-1) */
        if (net->kind == LSTM) {
            const float *c_prev = has_prev ? s->a + (t - 1) * n : NULL;
            const float *tanh_c = s->b + t * n;
            /* other: d c, carried from step t + 1 (read where t < last) */
            if (has_prev && t < last)
                lstm_backward_row(gt, gt + n, gt + 2 * n, gt + 3 * n, tanh_c, c_prev, d_h,
                                  other, d_g, d_g + n, d_g + 2 * n, d_g + 3 * n, n, 1, 1);
            else if (has_prev)
                lstm_backward_row(gt, gt + n, gt + 2 * n, gt + 3 * n, tanh_c, c_prev, d_h,
                                  other, d_g, d_g + n, d_g + 2 * n, d_g + 3 * n, n, 1, 0);
            else if (t < last)
                lstm_backward_row(gt, gt + n, gt + 2 * n, gt + 3 * n, tanh_c, NULL, d_h, other,
                                  d_g, d_g + n, d_g + 2 * n, d_g + 3 * n, n, 0, 1);
            else
                lstm_backward_row(gt, gt + n, gt + 2 * n, gt + 3 * n, tanh_c, NULL, d_h, other,
                                  d_g, d_g + n, d_g + 2 * n, d_g + 3 * n, n, 0, 0);
        } else if (net->kind == GRU) {
            /* other: d h_(t-1) outside the products (d_h z) */
            float *dr = s->d_rec;
            const float *n_t = s->a + t * n, *h_n = s->b + t * n;
            gru_backward_row(gt, gt + n, n_t, h_n, h_prev, d_h, d_g, d_g + n, d_g + 2 * n, dr,
                             dr + n, dr + 2 * n, other, n, has_prev);
            row_sums(dr + 2 * n, hidden, nb, g->b_hn);
            d_rec = dr;
        } else {
            for (long k = 0; k < n; k++) d_g[k] = d_h[k] * (1.0f - gt[k] * gt[k]);
        }
        row_sums(d_g, gh, nb, g->bias);
        blas_gemm(0, 0, gh, net->n_in, nb, d_g, nb, x_t, x_stride, 1.0f, g->w_ih, net->n_in);
        if (!has_prev) break;
        blas_gemm(0, 1, gh, hidden, nb, d_rec, nb, h_prev, nb, 1.0f, g->w_hh, hidden);
        if (net->kind == GRU) {
            /* d h_(t-1) = W_hh^T d_rec + d_h z, summed into `other`, which becomes d_h */
            blas_gemm(1, 0, hidden, nb, gh, w->w_hh, hidden, d_rec, nb, 1.0f, other, nb);
            float *swap = d_h;
            d_h = other, other = swap;
        } else {
            blas_gemm(1, 0, hidden, nb, gh, w->w_hh, hidden, d_rec, nb, 0.0f, d_h, nb);
        }
    }
}

static inline float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }

/* The gradient of every row's weighted cross-entropy, rows x row_params floats (each
   row's laid out as its parameters): params (one pointer per parameter, each stacked over
   the rows), x (rows, batch, steps, n_in), y (rows, batch) int64 labels, weight (rows,
   batch). Where `loss` is not NULL, it gets each row's weighted cross-entropy (rows
   floats; the sequential trainer judges divergence on it). Returns 0 where memory ran
   out. */
int recurrent_gradient(float *const *params, const float *x, const long *y,
                       const float *weight, float *grads, float *loss, long rows, long batch,
                       int kind, long hidden, long n_in, long steps, int threads) {
    Net net;
    describe(&net, kind, hidden, n_in, steps);
    long per_row = net.row_params, x_stride = steps * n_in;
    memset(grads, 0, sizeof(float) * (rows > 0 ? rows : 0) * per_row);
    if (loss) memset(loss, 0, sizeof(float) * (rows > 0 ? rows : 0));
    if (rows <= 0 || batch <= 0) return 1; /* nothing to learn from: a zero gradient */
    RowParts parts;
    if (!row_parts_init(&parts, rows, batch, per_row, threads, loss != NULL)) return 0;
    Scratch *scratch = scratch_all(&net, threads);
    if (!scratch) {
        row_parts_free(&parts);
        return 0;
    }
#pragma omp parallel num_threads(threads)
    {
        Scratch *s = &scratch[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
        for (long item = 0; item < parts.items; item++) {
            long from, to;
            float *flat;
            long r = row_parts_item(&parts, item, grads, &from, &to, &flat);
            Params w = stacked_params(&net, params, r), g = flat_params(&net, flat);
            for (long start = from; start < to; start += BLOCK) {
                long nb = to - start < BLOCK ? to - start : BLOCK;
                long at = r * batch + start;
                const float *xb = x + at * x_stride;
                logits(&net, &w, forward(&net, &w, xb, x_stride, nb, s), nb, s);
                for (long b = 0; b < nb; b++)
                    s->d_logit[b] = (sigmoid(s->logit1[b] - s->logit0[b]) - (float)y[at + b]) *
                                    weight[at + b];
                if (loss) {
                    float sum = 0.0f;
                    for (long b = 0; b < nb; b++)
                        sum += label_loss(s->logit1[b] - s->logit0[b], y[at + b]) * weight[at + b];
                    row_parts_add_loss(&parts, item, sum);
                }
                backward(&net, &w, &g, xb, x_stride, nb, s, s->d_logit);
            }
        }
    }
    scratch_free(scratch, threads);
    row_parts_sum(&parts, grads, loss);
    return 1;
}

/* Logits (rows, n, 2) of samples x through every row: x (n, steps, n_in) for every row
   (row_stride 0) or (rows, n, steps, n_in) (row_stride n steps n_in). Returns 0 where
   memory ran out. */
int recurrent_logits(float *const *params, const float *x, long row_stride, float *out,
                     long rows, long n, int kind, long hidden, long n_in, long steps,
                     int threads) {
    Net net;
    describe(&net, kind, hidden, n_in, steps);
    if (rows <= 0 || n <= 0) return 1;
    long x_stride = steps * n_in, blocks = (n + BLOCK - 1) / BLOCK;
    Scratch *scratch = scratch_all(&net, threads);
    if (!scratch) return 0;
#pragma omp parallel num_threads(threads)
    {
        Scratch *s = &scratch[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
        for (long item = 0; item < rows * blocks; item++) {
            long r = item / blocks, start = (item % blocks) * BLOCK;
            long nb = n - start < BLOCK ? n - start : BLOCK;
            Params w = stacked_params(&net, params, r);
            const float *xb = x + r * row_stride + start * x_stride;
            logits(&net, &w, forward(&net, &w, xb, x_stride, nb, s), nb, s);
            float *o = out + (r * n + start) * 2;
            for (long b = 0; b < nb; b++) o[2 * b] = s->logit0[b], o[2 * b + 1] = s->logit1[b];
        }
    }
    scratch_free(scratch, threads);
    return 1;
}
