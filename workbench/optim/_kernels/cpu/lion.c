/* Fused Lion on the CPU: param, grad and exp_avg read and written once, in the forloop backend's
 * order of operations. */
#include "multi_tensor.h"

/* hyper, flags and table rows by name: WB_H_*, WB_F_*, WB_ROW_* come from Lion's UpdateSpec
 * (compiled in as -D options, see workbench/optim/_spec.py). WB_H_DECAY_FACTOR is
 * 1 - lr * weight_decay, in lr's dtype: computed by the caller. No step counters. */
typedef struct {
    T *const *param, *const *grad, *const *exp_avg;
    ACC lr, beta1, one_minus_beta1, beta2, one_minus_beta2, decay_factor, grad_sign;
    int decay;
} lion_ctx;

/* specialized on weight decay (see multi_tensor.h) */
WB_INLINE void lion_loop(const lion_ctx *c, int64_t t, int64_t begin, int64_t end,
                         const int decay) {
    T *restrict param = c->param[t], *restrict grad = c->grad[t], *restrict exp_avg = c->exp_avg[t];
    const ACC lr = c->lr, beta1 = c->beta1, w1 = c->one_minus_beta1;
    const ACC beta2 = c->beta2, w2 = c->one_minus_beta2, sign = c->grad_sign;
    const ACC decay_factor = c->decay_factor;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
        const ACC g = load(grad, i) * sign;
        const ACC m = load(exp_avg, i);
        ACC p = load(param, i);
        if (decay)
            p = p * decay_factor;
        const ACC interpolated = m * beta1 + g * w1;
        /* torch.sign on the CPU: a NaN gives 0 */
        const ACC s = interpolated > 0 ? (ACC)1 : (interpolated < 0 ? (ACC)-1 : (ACC)0);
        store(param, i, p - s * lr);
        store(exp_avg, i, m * beta2 + g * w2);
    }
}

WB_RANGE_ON(lion, c->decay)

WB_EXPORT(lion)(const int64_t *table, int64_t n, const double *hyper, const int64_t *flags,
                int num_threads) {
    const double beta1 = hyper[WB_H_BETA1], beta2 = hyper[WB_H_BETA2];
    const lion_ctx ctx = {
        .param = wb_role(table, n, WB_ROW_PARAM),
        .grad = wb_role(table, n, WB_ROW_GRAD),
        .exp_avg = wb_role(table, n, WB_ROW_EXP_AVG),
        .lr = (ACC)hyper[WB_H_LR], .beta1 = (ACC)beta1, .one_minus_beta1 = (ACC)(1.0 - beta1),
        .beta2 = (ACC)beta2, .one_minus_beta2 = (ACC)(1.0 - beta2),
        .decay_factor = (ACC)hyper[WB_H_DECAY_FACTOR],
        .grad_sign = flags[WB_F_MAXIMIZE] ? (ACC)-1 : (ACC)1,
        .decay = hyper[WB_H_WEIGHT_DECAY] != 0,
    };
    wb_parallel(table + WB_ROWS * n, n, num_threads, lion_range, &ctx);
}
