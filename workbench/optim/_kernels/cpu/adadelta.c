/* Fused Adadelta on the CPU: each element of param, grad, square_avg and acc_delta read and
 * written once, in the forloop backend's order of operations. The step counters are advanced
 * here too, though the update does not read them: torch.optim keeps counting them. */
#include "multi_tensor.h"

/* hyper, flags and table rows by name: WB_H_*, WB_F_*, WB_ROW_* come from Adadelta's
 * UpdateSpec (compiled in as -D options, see workbench/optim/_spec.py) */
typedef struct {
    T *const *param, *const *grad, *const *square_avg, *const *acc_delta;
    ACC neg_lr, rho, one_minus_rho, eps, weight_decay, grad_sign;
    int coupled;
} adadelta_ctx;

/* specialized on weight decay (see multi_tensor.h) */
WB_INLINE void adadelta_loop(const adadelta_ctx *c, int64_t t, int64_t begin, int64_t end,
                             const int coupled) {
    T *restrict param = c->param[t], *restrict grad = c->grad[t];
    T *restrict square_avg = c->square_avg[t], *restrict acc_delta = c->acc_delta[t];
    const ACC neg_lr = c->neg_lr, rho = c->rho, w = c->one_minus_rho, eps = c->eps;
    const ACC weight_decay = c->weight_decay, sign = c->grad_sign;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
        const ACC p = load(param, i);
        const ACC g = wb_grad(grad, i, p, 1, sign, weight_decay, 0, coupled);
        const ACC v = load(square_avg, i) * rho + w * g * g;
        const ACC u = load(acc_delta, i);
        /* the ratio of the two roots first, then times g: torch's order */
        const ACC delta = wb_sqrt(u + eps) / wb_sqrt(v + eps) * g;
        store(square_avg, i, v);
        store(acc_delta, i, u * rho + w * delta * delta);
        store(param, i, p + neg_lr * delta);
    }
}

WB_RANGE_ON(adadelta, c->coupled)

WB_EXPORT(adadelta)(const int64_t *table, int64_t n, const double *hyper, const int64_t *flags,
                    int num_threads) {
    wb_increment_steps(table + WB_ROW_STEP * n, n, flags[WB_F_STEP_DTYPE]);
    const double rho = hyper[WB_H_RHO], weight_decay = hyper[WB_H_WEIGHT_DECAY];
    const adadelta_ctx ctx = {
        .param = wb_role(table, n, WB_ROW_PARAM),
        .grad = wb_role(table, n, WB_ROW_GRAD),
        .square_avg = wb_role(table, n, WB_ROW_SQUARE_AVG),
        .acc_delta = wb_role(table, n, WB_ROW_ACC_DELTA),
        .neg_lr = (ACC)(-hyper[WB_H_LR]), .rho = (ACC)rho, .one_minus_rho = (ACC)(1.0 - rho),
        .eps = (ACC)hyper[WB_H_EPS], .weight_decay = (ACC)weight_decay,
        .grad_sign = flags[WB_F_MAXIMIZE] ? (ACC)-1 : (ACC)1, .coupled = weight_decay != 0,
    };
    wb_parallel(table + WB_ROWS * n, n, num_threads, adadelta_range, &ctx);
}
