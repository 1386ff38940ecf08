/* Fused Adamax on the CPU: each element of param, grad, exp_avg and exp_inf read and written once,
 * in the forloop backend's order of operations. */
#include "multi_tensor.h"

/* hyper, flags and table rows by name: WB_H_*, WB_F_*, WB_ROW_* come from Adamax's UpdateSpec
 * (compiled in as -D options, see workbench/optim/_spec.py) */
typedef struct {
    T *const *param, *const *grad, *const *exp_avg, *const *exp_inf;
    const ACC *neg_step_size; /* per tensor, from its own step */
    ACC one_minus_beta1, beta2, eps, weight_decay, grad_sign;
} adamax_ctx;

/* specialized on weight decay (see multi_tensor.h) */
WB_INLINE void adamax_loop(const adamax_ctx *c, int64_t t, int64_t begin, int64_t end,
                           const int decay) {
    T *restrict param = c->param[t], *restrict grad = c->grad[t];
    T *restrict exp_avg = c->exp_avg[t], *restrict exp_inf = c->exp_inf[t];
    const ACC neg_step_size = c->neg_step_size[t], w = c->one_minus_beta1, beta2 = c->beta2;
    const ACC eps = c->eps, weight_decay = c->weight_decay, sign = c->grad_sign;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
        const ACC p = load(param, i);
        const ACC g = wb_grad(grad, i, p, 1, sign, weight_decay, 0, decay);
        const ACC m = wb_lerp(load(exp_avg, i), g, w);
        const ACC decayed = load(exp_inf, i) * beta2, bound = fabs(g) + eps;
        /* torch.maximum: a NaN on either side wins */
        const ACC u = (decayed > bound || decayed != decayed) ? decayed : bound;
        store(exp_avg, i, m);
        store(exp_inf, i, u);
        store(param, i, p + neg_step_size * m / u);
    }
}

WB_RANGE_ON(adamax, c->weight_decay != 0)

WB_EXPORT(adamax)(const int64_t *table, int64_t n, const double *hyper, const int64_t *flags,
                  int num_threads) {
    const double lr = hyper[WB_H_LR], beta1 = hyper[WB_H_BETA1];
    ACC neg_step_size[n > 0 ? n : 1];
    for (int64_t t = 0; t < n; ++t) {
        const double step = wb_increment_step(table[WB_ROW_STEP * n + t], flags[WB_F_STEP_DTYPE]);
        neg_step_size[t] = (ACC)(-(lr / (1.0 - pow(beta1, step))));
    }
    const adamax_ctx ctx = {
        .param = wb_role(table, n, WB_ROW_PARAM),
        .grad = wb_role(table, n, WB_ROW_GRAD),
        .exp_avg = wb_role(table, n, WB_ROW_EXP_AVG),
        .exp_inf = wb_role(table, n, WB_ROW_EXP_INF),
        .neg_step_size = neg_step_size, .one_minus_beta1 = (ACC)(1.0 - beta1),
        .beta2 = (ACC)hyper[WB_H_BETA2], .eps = (ACC)hyper[WB_H_EPS],
        .weight_decay = (ACC)hyper[WB_H_WEIGHT_DECAY],
        .grad_sign = flags[WB_F_MAXIMIZE] ? (ACC)-1 : (ACC)1,
    };
    wb_parallel(table + WB_ROWS * n, n, num_threads, adamax_range, &ctx);
}
