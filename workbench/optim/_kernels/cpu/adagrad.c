/* Fused Adagrad on the CPU: param, grad and state_sum read and written once, in the forloop
 * backend's order of operations. */
#include "multi_tensor.h"

/* hyper, flags and table rows by name: WB_H_*, WB_F_*, WB_ROW_* come from Adagrad's UpdateSpec
 * (compiled in as -D options, see workbench/optim/_spec.py). WB_H_GRAD_SCALE is GradScaler's
 * scale (0: none). */
typedef struct {
    T *const *param, *const *grad, *const *state_sum;
    const ACC *neg_clr; /* per tensor: -lr / (1 + (step - 1) * lr_decay) */
    ACC weight_decay, eps, grad_scale, grad_sign;
    int unscale, coupled;
} adagrad_ctx;

/* specialized on unscale and coupled (see multi_tensor.h) */
WB_INLINE void adagrad_loop(const adagrad_ctx *c, int64_t t, int64_t begin, int64_t end,
                            const int unscale, const int coupled) {
    T *restrict param = c->param[t], *restrict grad = c->grad[t];
    T *restrict state_sum = c->state_sum[t];
    const ACC neg_clr = c->neg_clr[t], weight_decay = c->weight_decay, eps = c->eps;
    const ACC scale = c->grad_scale, sign = c->grad_sign;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
        const ACC p = load(param, i);
        const ACC g = wb_grad(grad, i, p, scale, sign, weight_decay, unscale, coupled);
        const ACC sum = load(state_sum, i) + g * g;
        store(state_sum, i, sum);
        store(param, i, p + neg_clr * g / (wb_sqrt(sum) + eps));
    }
}

static void adagrad_range(const void *raw, int64_t t, int64_t begin, int64_t end) {
    const adagrad_ctx *c = raw;
#define CASE(b) \
    case b: adagrad_loop(c, t, begin, end, WB_BIT(b, 1), WB_BIT(b, 0)); break;
    switch (c->unscale << 1 | c->coupled) { WB_CASES_4(CASE) }
#undef CASE
}

WB_EXPORT(adagrad)(const int64_t *table, int64_t n, const double *hyper, const int64_t *flags,
                   int num_threads) {
    const double lr = hyper[WB_H_LR], lr_decay = hyper[WB_H_LR_DECAY];
    const double weight_decay = hyper[WB_H_WEIGHT_DECAY], grad_scale = hyper[WB_H_GRAD_SCALE];
    ACC neg_clr[n > 0 ? n : 1];
    for (int64_t t = 0; t < n; ++t) {
        const double step = wb_increment_step(table[WB_ROW_STEP * n + t], flags[WB_F_STEP_DTYPE]);
        neg_clr[t] = (ACC)(-(lr / (1.0 + (step - 1.0) * lr_decay)));
    }
    const adagrad_ctx ctx = {
        .param = wb_role(table, n, WB_ROW_PARAM),
        .grad = wb_role(table, n, WB_ROW_GRAD),
        .state_sum = wb_role(table, n, WB_ROW_SUM), .neg_clr = neg_clr,
        .weight_decay = (ACC)weight_decay, .eps = (ACC)hyper[WB_H_EPS],
        .grad_scale = (ACC)grad_scale, .grad_sign = flags[WB_F_MAXIMIZE] ? (ACC)-1 : (ACC)1,
        .unscale = grad_scale != 0, .coupled = weight_decay != 0,
    };
    wb_parallel(table + WB_ROWS * n, n, num_threads, adagrad_range, &ctx);
}
