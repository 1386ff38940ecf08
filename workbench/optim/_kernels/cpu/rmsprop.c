/* Fused RMSprop on the CPU: each element of param, grad, square_avg and (when their flags are on)
 * momentum_buffer and grad_avg read and written once, in the forloop backend's order of
 * operations. The step counters are advanced here too, though no term reads them: torch.optim
 * keeps counting them, and one call is cheaper than a separate foreach add. */
#include "multi_tensor.h"

/* hyper, flags and table rows by name: WB_H_*, WB_F_*, WB_ROW_* come from RMSprop's UpdateSpec
 * (compiled in as -D options, see workbench/optim/_spec.py). WB_F_HAS_MOMENTUM is momentum > 0;
 * without it (or without centered) the momentum_buffer (grad_avg) row holds stand-ins, never
 * read. */
typedef struct {
    T *const *param, *const *grad, *const *square_avg, *const *momentum_buffer, *const *grad_avg;
    ACC neg_lr, alpha, one_minus_alpha, eps, weight_decay, momentum, grad_sign;
    int has_momentum, centered, coupled;
} rmsprop_ctx;

/* specialized on has_momentum, centered, coupled (see multi_tensor.h): the first two decide
 * which buffers exist at all */
WB_INLINE void rmsprop_loop(const rmsprop_ctx *c, int64_t t, int64_t begin, int64_t end,
                            const int has_momentum, const int centered, const int coupled) {
    T *restrict param = c->param[t], *restrict grad = c->grad[t];
    T *restrict square_avg = c->square_avg[t];
    T *restrict buf = has_momentum ? c->momentum_buffer[t] : 0;
    T *restrict grad_avg = centered ? c->grad_avg[t] : 0;
    const ACC neg_lr = c->neg_lr, alpha = c->alpha, w = c->one_minus_alpha, eps = c->eps;
    const ACC weight_decay = c->weight_decay, momentum = c->momentum, sign = c->grad_sign;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
        const ACC p = load(param, i);
        const ACC g = wb_grad(grad, i, p, 1, sign, weight_decay, 0, coupled);
        /* mul_(alpha) then addcmul_(g, g, value=1 - alpha): (1 - alpha) * g first, then * g */
        const ACC v = load(square_avg, i) * alpha + w * g * g;
        store(square_avg, i, v);
        ACC denom;
        if (centered) {
            const ACC a = wb_lerp(load(grad_avg, i), g, w);
            store(grad_avg, i, a);
            /* torch's addcmul with value -1: -1 * a is exact, so this is the same rounding */
            denom = wb_sqrt(v - a * a) + eps;
        } else {
            denom = wb_sqrt(v) + eps;
        }
        if (has_momentum) {
            const ACC b = load(buf, i) * momentum + g / denom;
            store(buf, i, b);
            store(param, i, p + neg_lr * b);
        } else {
            /* addcdiv_(g, denom, value=-lr) scales the numerator before dividing */
            store(param, i, p + neg_lr * g / denom);
        }
    }
}

static void rmsprop_range(const void *raw, int64_t t, int64_t begin, int64_t end) {
    const rmsprop_ctx *c = raw;
#define CASE(b) \
    case b: rmsprop_loop(c, t, begin, end, WB_BIT(b, 2), WB_BIT(b, 1), WB_BIT(b, 0)); break;
    switch (c->has_momentum << 2 | c->centered << 1 | c->coupled) { WB_CASES_8(CASE) }
#undef CASE
}

WB_EXPORT(rmsprop)(const int64_t *table, int64_t n, const double *hyper, const int64_t *flags,
                   int num_threads) {
    const int has_momentum = flags[WB_F_HAS_MOMENTUM] != 0, centered = flags[WB_F_CENTERED] != 0;
    wb_increment_steps(table + WB_ROW_STEP * n, n, flags[WB_F_STEP_DTYPE]);
    const double alpha = hyper[WB_H_ALPHA], weight_decay = hyper[WB_H_WEIGHT_DECAY];
    const rmsprop_ctx ctx = {
        .param = wb_role(table, n, WB_ROW_PARAM),
        .grad = wb_role(table, n, WB_ROW_GRAD),
        .square_avg = wb_role(table, n, WB_ROW_SQUARE_AVG),
        .momentum_buffer = wb_role(table, n, WB_ROW_MOMENTUM_BUFFER),
        .grad_avg = wb_role(table, n, WB_ROW_GRAD_AVG),
        .neg_lr = (ACC)(-hyper[WB_H_LR]), .alpha = (ACC)alpha,
        .one_minus_alpha = (ACC)(1.0 - alpha), .eps = (ACC)hyper[WB_H_EPS],
        .weight_decay = (ACC)weight_decay, .momentum = (ACC)hyper[WB_H_MOMENTUM],
        .grad_sign = flags[WB_F_MAXIMIZE] ? (ACC)-1 : (ACC)1,
        .has_momentum = has_momentum, .centered = centered, .coupled = weight_decay != 0,
    };
    wb_parallel(table + WB_ROWS * n, n, num_threads, rmsprop_range, &ctx);
}
