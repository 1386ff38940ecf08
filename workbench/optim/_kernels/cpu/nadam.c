/* Fused NAdam on the CPU: param, grad, exp_avg and exp_avg_sq read and written once, in the
 * forloop backend's order of operations; step and mu_product advanced per tensor first. */
#include "multi_tensor.h"

/* hyper, flags and table rows by name: WB_H_*, WB_F_*, WB_ROW_* come from NAdam's UpdateSpec
 * (compiled in as -D options, see workbench/optim/_spec.py). WB_H_DECAY_FACTOR is
 * 1 - lr * weight_decay, in lr's dtype: computed by the caller. */
typedef struct {
    T *const *param, *const *grad, *const *exp_avg, *const *exp_avg_sq;
    /* per tensor, from its own step: the two update coefficients and 1 - beta2^t */
    const ACC *grad_coef, *avg_coef, *bias_correction2;
    ACC one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor, grad_sign;
    int coupled;
} nadam_ctx;

/* specialized on coupled weight decay (see multi_tensor.h) */
WB_INLINE void nadam_loop(const nadam_ctx *c, int64_t t, int64_t begin, int64_t end,
                          const int coupled) {
    T *restrict param = c->param[t], *restrict grad = c->grad[t];
    T *restrict exp_avg = c->exp_avg[t], *restrict exp_avg_sq = c->exp_avg_sq[t];
    const ACC grad_coef = c->grad_coef[t], avg_coef = c->avg_coef[t];
    const ACC bias_correction2 = c->bias_correction2[t];
    const ACC w = c->one_minus_beta1, beta2 = c->beta2, one_minus_beta2 = c->one_minus_beta2;
    const ACC eps = c->eps, weight_decay = c->weight_decay, decay = c->decay_factor;
    const ACC sign = c->grad_sign;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
        /* decoupled weight decay (decay = 1 otherwise); coupled and decoupled never meet */
        const ACC p = load(param, i) * decay;
        const ACC g = wb_grad(grad, i, p, 1, sign, weight_decay, 0, coupled);
        ACC m, v;
        wb_adam_moments(exp_avg, exp_avg_sq, i, g, w, beta2, one_minus_beta2, &m, &v);
        const ACC denom = wb_sqrt(v / bias_correction2) + eps;
        /* two updates, in torch's order (in fp32 math both: fp16/bf16 round once, when stored) */
        const ACC once = p + grad_coef * g / denom;
        store(param, i, once + avg_coef * m / denom);
    }
}

WB_RANGE_ON(nadam, c->coupled)

/* the momentum coefficient of step `step` */
static double nadam_mu(double beta1, double step, double momentum_decay) {
    return beta1 * (1.0 - 0.5 * pow(0.96, step * momentum_decay));
}

WB_EXPORT(nadam)(const int64_t *table, int64_t n, const double *hyper, const int64_t *flags,
                 int num_threads) {
    const double lr = hyper[WB_H_LR], beta1 = hyper[WB_H_BETA1], beta2 = hyper[WB_H_BETA2];
    const double weight_decay = hyper[WB_H_WEIGHT_DECAY];
    const double momentum_decay = hyper[WB_H_MOMENTUM_DECAY];
    const int decoupled = (int)flags[WB_F_DECOUPLED_WEIGHT_DECAY];
    const int64_t m = n > 0 ? n : 1;
    ACC grad_coef[m], avg_coef[m], bias_correction2[m];
    for (int64_t t = 0; t < n; ++t) {
        const double step = wb_increment_step(table[WB_ROW_STEP * n + t], flags[WB_F_STEP_DTYPE]);
        const double mu = nadam_mu(beta1, step, momentum_decay);
        const double mu_next = nadam_mu(beta1, step + 1.0, momentum_decay);
        /* the product as stored (fp32 when torch keeps it so), as torch.optim reads it back */
        const double product = wb_scale_scalar(table[WB_ROW_MU_PRODUCT * n + t], flags[WB_F_MU_PRODUCT_DTYPE], mu);
        grad_coef[t] = (ACC)(-lr * (1.0 - mu) / (1.0 - product));
        avg_coef[t] = (ACC)(-lr * mu_next / (1.0 - product * mu_next));
        bias_correction2[t] = (ACC)(1.0 - pow(beta2, step));
    }
    const nadam_ctx ctx = {
        .param = wb_role(table, n, WB_ROW_PARAM),
        .grad = wb_role(table, n, WB_ROW_GRAD),
        .exp_avg = wb_role(table, n, WB_ROW_EXP_AVG),
        .exp_avg_sq = wb_role(table, n, WB_ROW_EXP_AVG_SQ),
        .grad_coef = grad_coef, .avg_coef = avg_coef, .bias_correction2 = bias_correction2,
        .one_minus_beta1 = (ACC)(1.0 - beta1), .beta2 = (ACC)beta2,
        .one_minus_beta2 = (ACC)(1.0 - beta2), .eps = (ACC)hyper[WB_H_EPS],
        .weight_decay = (ACC)weight_decay,
        .decay_factor = decoupled && weight_decay != 0 ? (ACC)hyper[WB_H_DECAY_FACTOR] : (ACC)1,
        .grad_sign = flags[WB_F_MAXIMIZE] ? (ACC)-1 : (ACC)1,
        .coupled = !decoupled && weight_decay != 0,
    };
    wb_parallel(table + WB_ROWS * n, n, num_threads, nadam_range, &ctx);
}
