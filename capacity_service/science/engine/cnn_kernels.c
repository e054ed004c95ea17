/* The stacked CNN's gradient and accuracy pass for float32 tensors on a CPU.

   A stacked CNN of K trials is K small networks (a few channels, one 1 x S x S input).
   As grouped convolutions (groups = K) its step runs at about 11 GFLOP/s on this 2-core
   CPU: oneDNN's grouped convolutions, forward and back, take 70% of it and the pools'
   zero-filled gradients 12% (K = 32, 4 channels, batch 64). This takes each row's samples
   one at a time through direct convolutions with every activation of a sample in the
   caches: LANES-wide pieces of an output row, several of them (and two output channels)
   summed at once in vector registers. OpenMP runs rows in parallel (or, for fewer rows than threads, parts of a
   row's batch, summed after).

   The network is models.CNN: `layers` convolutions (C channels, k x k kernels, padding
   k / 2, bias), each followed by a ReLU and, where bit l of `pools` is set, a 2 x 2 max
   pool (the engine's order, pool then ReLU, equals ReLU then pool); the features
   (channel-major, as torch flattens them) go through an optional ReLU layer of `hidden`
   units and a linear layer to 2 logits. A row's parameters are the stack's tensors in
   models.CNN.parameters() order, each (rows, ...) and contiguous: params[2 l] the weights
   (C, C_in, k, k) of convolution l, params[2 l + 1] its bias, then the dense layers'
   weights (out, in) and biases. Ties in a pool go to the first maximum in row-major order
   and a NaN wins, as torch's max_pool2d does; relu(NaN) stays NaN. Compiled and loaded
   by native.py. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "row_parts.h"

#define MAX_LAYERS 9 /* native.CNNShape refuses more, and even or larger kernels */
#define MAX_KERNEL 5
#define LANES 8 /* floats an inner loop keeps in one accumulator: a vector register */

typedef struct {
    int layers, kernel, channels, side, hidden, pools;
    int in_channels[MAX_LAYERS];  /* 1 for the first layer, C after */
    int sides[MAX_LAYERS];        /* side of layer l's input and convolution output */
    int out_sides[MAX_LAYERS];    /* side after its pool */
    long param_sizes[2 * MAX_LAYERS + 4];
    int n_params;
    long row_params;              /* floats of one row's parameters */
    int features;                 /* C x (side of the last layer)^2 */
} Net;

static int pooled(const Net *net, int l) { return (net->pools >> l) & 1; }
static int padded(const Net *net, int l) { return net->sides[l] + net->kernel - 1; }
static long conv_weights(const Net *net, int l) { return net->param_sizes[2 * l]; }

static void describe(Net *net, int layers, int kernel, int channels, int side, int hidden,
                     int pools) {
    net->layers = layers; net->kernel = kernel; net->channels = channels;
    net->side = side; net->hidden = hidden; net->pools = pools;
    int s = side, p = 0;
    for (int l = 0; l < layers; l++) {
        net->in_channels[l] = l ? channels : 1;
        net->sides[l] = s;
        s = pooled(net, l) ? s / 2 : s;
        net->out_sides[l] = s;
        net->param_sizes[p++] = (long)channels * net->in_channels[l] * kernel * kernel;
        net->param_sizes[p++] = channels;
    }
    net->features = channels * s * s;
    int last_in = net->features;
    if (hidden) {
        net->param_sizes[p++] = (long)hidden * net->features;
        net->param_sizes[p++] = hidden;
        last_in = hidden;
    }
    net->param_sizes[p++] = 2L * last_in;
    net->param_sizes[p++] = 2;
    net->n_params = p;
    net->row_params = 0;
    for (int i = 0; i < p; i++) net->row_params += net->param_sizes[i];
}

/* One row's parameters: pointers into the stacked tensors. */
static void row_params(const Net *net, float *const *stacked, long row, const float **out) {
    for (int i = 0; i < net->n_params; i++) out[i] = stacked[i] + row * net->param_sizes[i];
}

/* Pointers into a flat buffer laid out as one row's parameters (its gradient). */
static void flat_params(const Net *net, float *flat, float **out) {
    for (int i = 0; i < net->n_params; i++) {
        out[i] = flat;
        flat += net->param_sizes[i];
    }
}

/* Per-thread scratch: each layer's padded input (pad[l + 1]'s inside is layer l's
   output), the pools' choices, the backward pass's buffers sized for the largest layer,
   and the row's flipped weights. The pads' borders stay zero: only insides are written. */
typedef struct {
    float *pad[MAX_LAYERS];
    unsigned char *choice[MAX_LAYERS]; /* which of its window each pooled output took */
    float *flipped[MAX_LAYERS];        /* layer l's weights as (C_in, C, k, k), reversed */
    float *pre;        /* one convolution's output, before pool and ReLU */
    float *d_pre;      /* d of it, zero-padded as a layer's input is */
    float *d_in;       /* d of a layer's input (C_in, s, s) */
    float *features, *d_features, *hidden, *d_hidden;
    void *block;
} Scratch;

static int scratch_init(Scratch *s, const Net *net) {
    int k = net->kernel;
    long floats = 0, choices = 0, most_pre = 0, most_padded = 0;
    for (int l = 0; l < net->layers; l++) {
        long sl = net->sides[l], wide = sl + k - 1;
        floats += (long)net->in_channels[l] * padded(net, l) * padded(net, l);
        floats += conv_weights(net, l);
        if (pooled(net, l)) choices += (long)net->channels * net->out_sides[l] * net->out_sides[l];
        if (net->channels * sl * sl > most_pre) most_pre = net->channels * sl * sl;
        if (net->channels * wide * wide > most_padded) most_padded = net->channels * wide * wide;
    }
    long hidden = net->hidden ? net->hidden : 1;
    floats += 2 * most_pre + most_padded + 2L * net->features + 2 * hidden;
    s->block = calloc(1, sizeof(float) * floats + choices);
    if (!s->block) return 0;
    float *f = (float *)s->block;
    for (int l = 0; l < net->layers; l++) {
        s->pad[l] = f; f += (long)net->in_channels[l] * padded(net, l) * padded(net, l);
        s->flipped[l] = f; f += conv_weights(net, l);
    }
    s->pre = f; f += most_pre;
    s->d_in = f; f += most_pre;
    s->d_pre = f; f += most_padded;
    s->features = f; f += net->features;
    s->d_features = f; f += net->features;
    s->hidden = f; f += hidden;
    s->d_hidden = f; f += hidden;
    unsigned char *c = (unsigned char *)f;
    for (int l = 0; l < net->layers; l++) {
        s->choice[l] = pooled(net, l) ? c : NULL;
        if (pooled(net, l)) c += (long)net->channels * net->out_sides[l] * net->out_sides[l];
    }
    return 1;
}

static void scratch_free(Scratch *all, int threads) {
    for (int t = 0; t < threads; t++) free(all[t].block);
    free(all);
}

/* One scratch per thread, made before the parallel region (every thread of an OpenMP
   team must reach its `omp for`, so none may bail out inside); NULL where memory ran out. */
static Scratch *scratch_all(const Net *net, int threads) {
    Scratch *all = calloc((size_t)threads, sizeof(Scratch));
    if (!all) return NULL;
    for (int t = 0; t < threads; t++)
        if (!scratch_init(&all[t], net)) {
            scratch_free(all, threads);
            return NULL;
        }
    return all;
}

/* LANES floats as one vector register (GCC/Clang vector extensions: AVX on x86-64,
   NEON pairs on ARM); `vload`/`vstore` take any float address. */
typedef float vec __attribute__((vector_size(4 * LANES)));
typedef float vec_unaligned __attribute__((vector_size(4 * LANES), aligned(4)));
static inline vec vload(const float *at) { return *(const vec_unaligned *)at; }
static inline void vstore(float *at, vec v) { *(vec_unaligned *)at = v; }

/* BLOCK pieces of `conv`'s output map o, each LANES wide, at o + out_at[i] and read from
   in + in_at[i]: BLOCK independent sums, so that the FMAs do not wait on each other (one
   sum is a chain of dependent FMAs, several cycles each); each weight is loaded once for
   all of them. */
#define BLOCK 8
static inline void conv_block(const float *in, const float *wo, float b, float *o,
                              const int *in_at, const int *out_at, int c_in, int ps, int k) {
    vec acc[BLOCK];
    for (int i = 0; i < BLOCK; i++) acc[i] = (vec){0} + b;
    for (int ci = 0; ci < c_in; ci++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                float wv = wo[(ci * k + ky) * k + kx];
                const float *shifted = in + ((long)ci * ps + ky) * ps + kx;
                for (int i = 0; i < BLOCK; i++) acc[i] += wv * vload(shifted + in_at[i]);
            }
    for (int i = 0; i < BLOCK; i++) vstore(o + out_at[i], acc[i]);
}

/* conv_block for two output channels at once, PAIR pieces each: every input vector
   loaded serves two sums (measured at 8 channels of 5x5, K = 32, batch 64: a step 11.3K
   -> 15.1K sample-rows/s; 3x3 unchanged). */
#define PAIR 4
static inline void conv_block_pair(const float *in, const float *w0, const float *w1,
                                   float b0, float b1, float *o0, float *o1, const int *in_at,
                                   const int *out_at, int c_in, int ps, int k) {
    vec acc0[PAIR], acc1[PAIR];
    for (int i = 0; i < PAIR; i++) {
        acc0[i] = (vec){0} + b0;
        acc1[i] = (vec){0} + b1;
    }
    for (int ci = 0; ci < c_in; ci++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                int t = (ci * k + ky) * k + kx;
                float u = w0[t], v = w1[t];
                const float *shifted = in + ((long)ci * ps + ky) * ps + kx;
                for (int i = 0; i < PAIR; i++) {
                    vec x = vload(shifted + in_at[i]);
                    acc0[i] += u * x;
                    acc1[i] += v * x;
                }
            }
    for (int i = 0; i < PAIR; i++) {
        vstore(o0 + out_at[i], acc0[i]);
        vstore(o1 + out_at[i], acc1[i]);
    }
}

/* One whole-vector piece of output channel co (at out_at, read from in_at). */
static inline void conv_piece(const float *in, const float *wo, float b, float *o, int in_at,
                              int out_at, int c_in, int ps, int k) {
    vec acc = (vec){0} + b;
    for (int ci = 0; ci < c_in; ci++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++)
                acc += wo[(ci * k + ky) * k + kx] *
                       vload(in + ((long)ci * ps + ky) * ps + kx + in_at);
    vstore(o + out_at, acc);
}

/* out (C_out, s, s) = bias (or 0 where NULL) + w (C_out, C_in, k, k) correlated with in
   (C_in, s + k - 1, s + k - 1), the input zero-padded by (k - 1) / 2. Output channels go
   two at a time (conv_block_pair), an odd last one alone (conv_block). */
static void conv(const float *restrict in, const float *restrict w, const float *restrict bias,
                 float *restrict out, int c_in, int c_out, int s, int k) {
    int ps = s + k - 1, whole = s / LANES * LANES;
    long taps = (long)c_in * k * k;
    for (int co = 0; co < c_out; co += 2) {
        int pair = co + 1 < c_out, block = pair ? PAIR : BLOCK;
        const float *w0 = w + co * taps, *w1 = pair ? w0 + taps : w0;
        float b0 = bias ? bias[co] : 0.0f, b1 = bias && pair ? bias[co + 1] : 0.0f;
        float *o0 = out + (long)co * s * s, *o1 = pair ? o0 + (long)s * s : o0;
        int in_at[BLOCK], out_at[BLOCK], n = 0;
        for (int y = 0; y < s; y++)  /* whole vectors, a block at once */
            for (int x0 = 0; x0 < whole; x0 += LANES) {
                in_at[n] = y * ps + x0;
                out_at[n] = y * s + x0;
                if (++n == block) {
                    if (pair) conv_block_pair(in, w0, w1, b0, b1, o0, o1, in_at, out_at, c_in, ps, k);
                    else conv_block(in, w0, b0, o0, in_at, out_at, c_in, ps, k);
                    n = 0;
                }
            }
        for (int i = 0; i < n; i++) {  /* whole vectors left over */
            conv_piece(in, w0, b0, o0, in_at[i], out_at[i], c_in, ps, k);
            if (pair) conv_piece(in, w1, b1, o1, in_at[i], out_at[i], c_in, ps, k);
        }
        for (int c = co; c < co + 1 + pair; c++)  /* the columns past the last whole vector */
            for (int y = 0; y < s; y++)
                for (int x = whole; x < s; x++) {
                    const float *wo = w + c * taps;
                    float acc = bias ? bias[c] : 0.0f;
                    for (int ci = 0; ci < c_in; ci++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++)
                                acc += wo[(ci * k + ky) * k + kx] *
                                       in[((long)ci * ps + y + ky) * ps + x + kx];
                    out[((long)c * s + y) * s + x] = acc;
                }
    }
}

/* The taps (ky0 .. ky0 + rows - 1, 0 .. k - 1) of g[co][ci]: one independent sum each
   (called with constant rows and k, so that the sums stay in registers). */
static inline void weight_taps(const float *d, long d_plane, int d_stride, const float *in,
                               float *g, int co, int ci, int ky0, int rows, int c_in, int s,
                               int k) {
    int ps = s + k - 1, whole = s / LANES * LANES;
    vec acc[MAX_KERNEL * MAX_KERNEL];
    float rest[MAX_KERNEL * MAX_KERNEL];
    for (int t = 0; t < rows * k; t++) { acc[t] = (vec){0}; rest[t] = 0.0f; }
    for (int y = 0; y < s; y++) {
        const float *dr = d + co * d_plane + (long)y * d_stride;
        const float *ir = in + ((long)ci * ps + y + ky0) * ps;
        for (int x0 = 0; x0 < whole; x0 += LANES) {
            vec dv = vload(dr + x0);
            for (int r = 0; r < rows; r++)
                for (int kx = 0; kx < k; kx++)
                    acc[r * k + kx] += dv * vload(ir + (long)r * ps + x0 + kx);
        }
        for (int x = whole; x < s; x++)
            for (int r = 0; r < rows; r++)
                for (int kx = 0; kx < k; kx++)
                    rest[r * k + kx] += dr[x] * ir[(long)r * ps + x + kx];
    }
    for (int t = 0; t < rows * k; t++) {
        float sum = rest[t];
        for (int j = 0; j < LANES; j++) sum += acc[t][j];
        g[((co * c_in + ci) * k + ky0) * k + t] += sum;
    }
}

/* g (C_out, C_in, k, k) += d (C_out, s, s; read at row stride d_stride, plane d_plane)
   correlated with in (C_in, s + k - 1, s + k - 1): the weights' gradient. */
static void conv_weight_gradient(const float *d, long d_plane, int d_stride, const float *in,
                                 float *g, int c_in, int c_out, int s, int k) {
    for (int co = 0; co < c_out; co++)
        for (int ci = 0; ci < c_in; ci++)
            if (k == 3) weight_taps(d, d_plane, d_stride, in, g, co, ci, 0, 3, c_in, s, 3);
            else if (k == 5) {  /* kernel rows 0-1, 2-3, 4: 10 sums fit the registers */
                weight_taps(d, d_plane, d_stride, in, g, co, ci, 0, 2, c_in, s, 5);
                weight_taps(d, d_plane, d_stride, in, g, co, ci, 2, 2, c_in, s, 5);
                weight_taps(d, d_plane, d_stride, in, g, co, ci, 4, 1, c_in, s, 5);
            }
            else  /* any other odd k up to MAX_KERNEL, one kernel row at a time */
                for (int ky = 0; ky < k; ky++)
                    weight_taps(d, d_plane, d_stride, in, g, co, ci, ky, 1, c_in, s, k);
}

/* w (C_out, C_in, k, k) -> flipped (C_in, C_out, k, k) with both kernel axes reversed:
   the input's gradient is `conv` of the output's (padded as the input is) with them. */
static void flip(const float *w, float *flipped, int c_in, int c_out, int k) {
    for (int co = 0; co < c_out; co++)
        for (int ci = 0; ci < c_in; ci++)
            for (int t = 0; t < k * k; t++)
                flipped[(ci * c_out + co) * k * k + (k * k - 1 - t)] =
                    w[(co * c_in + ci) * k * k + t];
}

static inline float relu(float v) { return v < 0.0f ? 0.0f : v; }  /* NaN stays NaN */

/* pre (C, s, s) -> the ReLU of its 2 x 2 max pool into dst (C, s/2, s/2) at row stride
   `stride` (a padded buffer's inside), remembering each window's choice (0..3, row-major).
   As torch's max_pool2d: the first maximum in row-major order, and a NaN wins. Selects,
   not branches: the comparisons of random data mispredict half the time. */
static void pool_relu(const float *pre, unsigned char *choice, float *dst, long plane,
                      int stride, int channels, int s) {
    int h = s / 2;
    for (int c = 0; c < channels; c++)
        for (int y = 0; y < h; y++) {
            const float *top = pre + (long)c * s * s + 2L * y * s, *bottom = top + s;
            unsigned char *picked = choice + ((long)c * h + y) * h;
            float *out = dst + c * plane + (long)y * stride;
            for (int x = 0; x < h; x++) {
                float a = top[2 * x], b = top[2 * x + 1], c2 = bottom[2 * x], d = bottom[2 * x + 1];
                int tb = b > a || b != b;
                float m = tb ? b : a;
                int tc = c2 > m || c2 != c2;
                m = tc ? c2 : m;
                int td = d > m || d != d;
                m = td ? d : m;
                picked[x] = (unsigned char)(td ? 3 : tc ? 2 : tb);
                out[x] = relu(m);
            }
        }
}

static void relu_into(const float *pre, float *dst, long plane, int stride, int channels,
                      int s) {
    for (int c = 0; c < channels; c++)
        for (int y = 0; y < s; y++)
            for (int x = 0; x < s; x++)
                dst[c * plane + (long)y * stride + x] = relu(pre[((long)c * s + y) * s + x]);
}

/* Where layer l's output lives: the next layer's padded inside, or the features */
static float *output_of(const Net *net, Scratch *s, int l, long *plane, int *stride) {
    if (l + 1 < net->layers) {
        int ps = padded(net, l + 1), p = net->kernel / 2;
        *plane = (long)ps * ps;
        *stride = ps;
        return s->pad[l + 1] + (long)p * ps + p;
    }
    *plane = (long)net->out_sides[l] * net->out_sides[l];
    *stride = net->out_sides[l];
    return s->features;
}

/* Forward one sample (image of side^2 floats): logits[0..1]; keeps what backward needs */
static void forward_sample(const Net *net, const float **w, const float *image, Scratch *s,
                           float *logits) {
    int k = net->kernel, p = k / 2, side = net->side, ps0 = padded(net, 0);
    for (int y = 0; y < side; y++)
        memcpy(s->pad[0] + (long)(y + p) * ps0 + p, image + (long)y * side,
               sizeof(float) * side);
    for (int l = 0; l < net->layers; l++) {
        int sl = net->sides[l];
        conv(s->pad[l], w[2 * l], w[2 * l + 1], s->pre, net->in_channels[l], net->channels,
             sl, k);
        long plane; int stride;
        float *dst = output_of(net, s, l, &plane, &stride);
        if (pooled(net, l)) pool_relu(s->pre, s->choice[l], dst, plane, stride, net->channels, sl);
        else relu_into(s->pre, dst, plane, stride, net->channels, sl);
    }
    const float *in = s->features;
    int n_in = net->features, d = 2 * net->layers;
    if (net->hidden) {
        for (int j = 0; j < net->hidden; j++) {
            const float *wj = w[d] + (long)j * n_in;
            float sum = w[d + 1][j];
            for (int i = 0; i < n_in; i++) sum += wj[i] * in[i];
            s->hidden[j] = relu(sum);
        }
        in = s->hidden; n_in = net->hidden; d += 2;
    }
    for (int o = 0; o < 2; o++) {
        const float *wo = w[d] + (long)o * n_in;
        float sum = w[d + 1][o];
        for (int i = 0; i < n_in; i++) sum += wo[i] * in[i];
        logits[o] = sum;
    }
}

/* Backward one sample after forward_sample, from d loss / d logit_1 = `d` (and -d for
   logit_0): adds the sample's gradient to g (one row's, laid out as its parameters).
   The flipped weights of the row (s->flipped) must be current. */
static void backward_sample(const Net *net, const float **w, float **g, float d, Scratch *s) {
    int layers = net->layers, top = 2 * layers + (net->hidden ? 2 : 0);
    const float *in = net->hidden ? s->hidden : s->features;
    int n_in = net->hidden ? net->hidden : net->features;
    float *d_in = net->hidden ? s->d_hidden : s->d_features;
    g[top + 1][0] -= d;
    g[top + 1][1] += d;
    for (int i = 0; i < n_in; i++) {
        g[top][i] -= d * in[i];
        g[top][n_in + i] += d * in[i];
        d_in[i] = d * (w[top][n_in + i] - w[top][i]);
    }
    if (net->hidden) {
        int f = net->features, fc = 2 * layers;
        for (int i = 0; i < f; i++) s->d_features[i] = 0.0f;
        for (int j = 0; j < net->hidden; j++) {
            float dh = s->hidden[j] > 0.0f ? s->d_hidden[j] : 0.0f;
            if (dh == 0.0f) continue;
            g[fc + 1][j] += dh;
            float *gj = g[fc] + (long)j * f;
            const float *wj = w[fc] + (long)j * f;
            for (int i = 0; i < f; i++) {
                gj[i] += dh * s->features[i];
                s->d_features[i] += dh * wj[i];
            }
        }
    }
    int k = net->kernel, c = net->channels;
    const float *d_out = s->d_features;  /* d of layer l's output, dense (C, so, so) */
    for (int l = layers - 1; l >= 0; l--) {
        int sl = net->sides[l], so = net->out_sides[l], wide = padded(net, l);
        long plane, d_plane = (long)wide * wide;
        int stride;
        const float *out = output_of(net, s, l, &plane, &stride);
        /* d_pre: d of the convolution's output, through the ReLU (and the pool), inside
           a border of (k - 1) / 2 zeros */
        float *inside = s->d_pre + (long)(k / 2) * wide + k / 2;
        memset(s->d_pre, 0, sizeof(float) * c * d_plane);
        for (int ch = 0; ch < c; ch++)
            for (int y = 0; y < so; y++) {
                const float *o = out + ch * plane + (long)y * stride;
                const float *dy = d_out + ((long)ch * so + y) * so;
                if (pooled(net, l)) {
                    const unsigned char *picked = s->choice[l] + ((long)ch * so + y) * so;
                    float *window = inside + ch * d_plane + 2L * y * wide;
                    for (int x = 0; x < so; x++)
                        window[(picked[x] >> 1) * wide + 2 * x + (picked[x] & 1)] =
                            o[x] > 0.0f ? dy[x] : 0.0f;
                } else {
                    float *row = inside + ch * d_plane + (long)y * wide;
                    for (int x = 0; x < so; x++) row[x] = o[x] > 0.0f ? dy[x] : 0.0f;
                }
            }
        float *gb = g[2 * l + 1];
        for (int ch = 0; ch < c; ch++) {
            vec acc = {0};
            float sum = 0.0f;
            int whole = sl / LANES * LANES;
            for (int y = 0; y < sl; y++) {
                const float *row = inside + ch * d_plane + (long)y * wide;
                for (int x = 0; x < whole; x += LANES) acc += vload(row + x);
                for (int x = whole; x < sl; x++) sum += row[x];
            }
            for (int j = 0; j < LANES; j++) sum += acc[j];
            gb[ch] += sum;
        }
        conv_weight_gradient(inside, d_plane, wide, s->pad[l], g[2 * l], net->in_channels[l],
                             c, sl, k);
        if (l == 0) break;  /* the image needs no gradient */
        /* d of the input (C_in, sl, sl): the padded d_pre correlated with the flipped
           weights; the next layer down reads it as d of its output */
        conv(s->d_pre, s->flipped[l], NULL, s->d_in, c, net->in_channels[l], sl, k);
        d_out = s->d_in;
    }
}

static float sigmoid(float t) { return 1.0f / (1.0f + expf(-t)); }

/* The gradient of every row's weighted cross-entropy over its batch.
   params: the stacked parameters (see the header); x (rows, batch, side^2) images;
   y (rows, batch) labels 0/1; weight (rows, batch), 1 / count on a row's samples and 0 on
   padding; grads (rows, row_params): each row's gradient, its parameters' layout; loss
   (rows), where not NULL: each row's weighted cross-entropy.
   Returns 0 where scratch memory could not be had. */
int cnn_gradient(float *const *params, const float *x, const long *y, const float *weight,
                 float *grads, float *loss, long rows, long batch, int layers, int kernel,
                 int channels, int side, int hidden, int pools, int threads) {
    Net net;
    describe(&net, layers, kernel, channels, side, hidden, pools);
    long pixels = (long)side * side, per_row = net.row_params;
    if (rows <= 0 || batch <= 0) {  /* nothing to learn from: a zero gradient */
        memset(grads, 0, sizeof(float) * (rows > 0 ? rows : 0) * per_row);
        if (loss) memset(loss, 0, sizeof(float) * (rows > 0 ? rows : 0));
        return 1;
    }
    RowParts parts;
    if (!row_parts_init(&parts, rows, batch, per_row, threads, loss != NULL)) return 0;
    Scratch *scratch = scratch_all(&net, threads);
    if (!scratch) {
        row_parts_free(&parts);
        return 0;
    }
    memset(grads, 0, sizeof(float) * rows * per_row);
#pragma omp parallel num_threads(threads)
    {
        Scratch *s = &scratch[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
            for (long item = 0; item < parts.items; item++) {
                long from, to;
                float *flat;
                long r = row_parts_item(&parts, item, grads, &from, &to, &flat);
                const float *w[2 * MAX_LAYERS + 4];
                float *g[2 * MAX_LAYERS + 4];
                row_params(&net, params, r, w);
                for (int l = 1; l < net.layers; l++)
                    flip(w[2 * l], s->flipped[l], net.in_channels[l], net.channels, net.kernel);
                flat_params(&net, flat, g);
                for (long b = from; b < to; b++) {
                    long at = r * batch + b;
                    float logits[2];
                    forward_sample(&net, w, x + at * pixels, s, logits);
                    float d = (sigmoid(logits[1] - logits[0]) - (float)y[at]) * weight[at];
                    if (loss)
                        row_parts_add_loss(&parts, item,
                                           label_loss(logits[1] - logits[0], y[at]) * weight[at]);
                    if (d != 0.0f || d != d) backward_sample(&net, w, g, d, s);
                }
            }
    }
    scratch_free(scratch, threads);
    row_parts_sum(&parts, grads, loss);
    return 1;
}

/* The logits (rows, n, 2) of n images through every row. x (n, side^2) is shared by all
   rows when x_row_stride is 0, or (rows, n, side^2) with x_row_stride n side^2.
   Returns 0 where scratch memory could not be had. */
int cnn_logits(float *const *params, const float *x, long x_row_stride, float *logits,
               long rows, long n, int layers, int kernel, int channels, int side, int hidden,
               int pools, int threads) {
    Net net;
    describe(&net, layers, kernel, channels, side, hidden, pools);
    long pixels = (long)side * side, part = 64, parts = (n + part - 1) / part;
    Scratch *scratch = scratch_all(&net, threads);
    if (!scratch) return 0;
#pragma omp parallel num_threads(threads)
    {
        Scratch *s = &scratch[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
            for (long item = 0; item < rows * parts; item++) {
                long r = item / parts, from = (item % parts) * part;
                long to = from + part < n ? from + part : n;
                const float *w[2 * MAX_LAYERS + 4];
                row_params(&net, params, r, w);
                for (long b = from; b < to; b++)
                    forward_sample(&net, w, x + r * x_row_stride + b * pixels, s,
                                   logits + (r * n + b) * 2);
            }
    }
    scratch_free(scratch, threads);
    return 1;
}
