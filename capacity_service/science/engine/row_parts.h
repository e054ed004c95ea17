/* How a stacked gradient's work is cut among threads (cnn_kernels.c, recurrent_rows.c):
   one item per row, or, for fewer rows than threads, each row's batch in parts, each
   part summing into its own gradient, added into the row's after the parallel region.
   Where the caller asks for each row's loss, each item sums its own, added into the
   row's in item order after (so the result does not depend on the threads' timing). */
#ifndef ROW_PARTS_H
#define ROW_PARTS_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    long split, items, batch, per_row;
    float *partial; /* items x per_row, where split > 1 */
    float *loss;    /* items, where each row's loss is asked for */
} RowParts;

/* 1, or 0 where memory for the parts' gradients ran out. `want_loss`: keep a loss per
   item (`row_parts_add_loss`). */
static inline int row_parts_init(RowParts *p, long rows, long batch, long per_row,
                                 int threads, int want_loss) {
    long split = rows >= threads ? 1 : (threads + rows - 1) / rows;
    if (split > batch) split = batch;
    if (split < 1) split = 1;
    p->split = split, p->items = rows * split, p->batch = batch, p->per_row = per_row;
    p->partial = split > 1 ? calloc((size_t)(p->items * per_row), sizeof(float)) : NULL;
    p->loss = want_loss ? calloc((size_t)p->items, sizeof(float)) : NULL;
    if ((split > 1 && !p->partial) || (want_loss && !p->loss)) {
        free(p->partial), free(p->loss);
        p->partial = p->loss = NULL;
        return 0;
    }
    return 1;
}

/* Item `item`'s row, its samples [*from, *to), and the gradient it sums into. */
static inline long row_parts_item(const RowParts *p, long item, float *grads, long *from,
                                  long *to, float **g) {
    long r = item / p->split, part = item % p->split;
    *from = p->batch * part / p->split, *to = p->batch * (part + 1) / p->split;
    *g = p->partial ? p->partial + item * p->per_row : grads + r * p->per_row;
    return r;
}

/* -log softmax(logits)[y] of a two-class sample, from margin = logit_1 - logit_0:
   softplus(margin) for label 0, softplus(-margin) for 1, without overflow; NaN stays NaN. */
static inline float label_loss(float margin, long y) {
    float u = y ? -margin : margin;
    return (u > 0.0f ? u : 0.0f) + log1pf(expf(-fabsf(u)));
}

/* Adds `value` to item `item`'s loss, where losses are kept. */
static inline void row_parts_add_loss(RowParts *p, long item, float value) {
    if (p->loss) p->loss[item] += value;
}

/* Adds the parts' gradients into their rows' (rows x per_row) and, where losses are kept,
   the items' losses into `loss` (rows floats, overwritten); frees what it kept. */
static inline void row_parts_sum(RowParts *p, float *grads, float *loss) {
    if (p->partial) {
        for (long item = 0; item < p->items; item++) {
            const float *from = p->partial + item * p->per_row;
            float *to = grads + (item / p->split) * p->per_row;
            for (long i = 0; i < p->per_row; i++) to[i] += from[i];
        }
    }
    if (p->loss) {
        memset(loss, 0, sizeof(float) * (size_t)(p->items / p->split));
        for (long item = 0; item < p->items; item++) loss[item / p->split] += p->loss[item];
    }
    free(p->partial), free(p->loss);
    p->partial = p->loss = NULL;
}

static inline void row_parts_free(RowParts *p) {
    free(p->partial), free(p->loss);
    p->partial = p->loss = NULL;
}

#endif
