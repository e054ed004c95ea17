/* How a stacked gradient's work is cut among threads (cnn_kernels.c, recurrent_rows.c):
   one item per row, or, for fewer rows than threads, each row's batch in parts, each
   part summing into its own gradient, added into the row's after the parallel region. */
#ifndef ROW_PARTS_H
#define ROW_PARTS_H

#include <stdlib.h>

typedef struct {
    long split, items, batch, per_row;
    float *partial; /* items x per_row, where split > 1 */
} RowParts;

/* 1, or 0 where memory for the parts' gradients ran out. */
static inline int row_parts_init(RowParts *p, long rows, long batch, long per_row,
                                 int threads) {
    long split = rows >= threads ? 1 : (threads + rows - 1) / rows;
    if (split > batch) split = batch;
    if (split < 1) split = 1;
    p->split = split, p->items = rows * split, p->batch = batch, p->per_row = per_row;
    p->partial = split > 1 ? calloc((size_t)(p->items * per_row), sizeof(float)) : NULL;
    return split == 1 || p->partial != NULL;
}

/* Item `item`'s row, its samples [*from, *to), and the gradient it sums into. */
static inline long row_parts_item(const RowParts *p, long item, float *grads, long *from,
                                  long *to, float **g) {
    long r = item / p->split, part = item % p->split;
    *from = p->batch * part / p->split, *to = p->batch * (part + 1) / p->split;
    *g = p->partial ? p->partial + item * p->per_row : grads + r * p->per_row;
    return r;
}

/* Adds the parts' gradients into their rows' (rows x per_row) and frees them. */
static inline void row_parts_sum(RowParts *p, float *grads) {
    if (!p->partial) return;
    for (long item = 0; item < p->items; item++) {
        const float *from = p->partial + item * p->per_row;
        float *to = grads + (item / p->split) * p->per_row;
        for (long i = 0; i < p->per_row; i++) to[i] += from[i];
    }
    free(p->partial);
    p->partial = NULL;
}

static inline void row_parts_free(RowParts *p) {
    free(p->partial);
    p->partial = NULL;
}

#endif
