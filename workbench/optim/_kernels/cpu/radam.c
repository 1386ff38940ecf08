/* Fused RAdam on the CPU: param, grad, exp_avg and exp_avg_sq read and written once, in the
 * forloop backend's order of operations; the steps advanced first, each tensor's switch to the
 * rectified update decided from its own step. */
#include "multi_tensor.h"

/* hyper, flags and table rows by name: WB_H_*, WB_F_*, WB_ROW_* come from RAdam's UpdateSpec
 * (compiled in as -D options, see workbench/optim/_spec.py). WB_H_DECAY_FACTOR is
 * 1 - lr * weight_decay, in lr's dtype: computed by the caller. */
typedef struct {
    T *const *param, *const *grad, *const *exp_avg, *const *exp_avg_sq;
    /* per tensor, from its own step: whether rho_t > 5, and the step size (rectification and
     * sqrt(1 - beta2^t) folded in when so) */
    const ACC *neg_step_size;
    const unsigned char *rectified;
    ACC one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor, grad_sign;
    int coupled;
} radam_ctx;

/* specialized on the switch and on coupled weight decay (see multi_tensor.h) */
WB_INLINE void radam_loop(const radam_ctx *c, int64_t t, int64_t begin, int64_t end,
                          const int rectified, const int coupled) {
    T *restrict param = c->param[t], *restrict grad = c->grad[t];
    T *restrict exp_avg = c->exp_avg[t], *restrict exp_avg_sq = c->exp_avg_sq[t];
    const ACC neg_step_size = c->neg_step_size[t];
    const ACC w = c->one_minus_beta1, beta2 = c->beta2, one_minus_beta2 = c->one_minus_beta2;
    const ACC eps = c->eps, weight_decay = c->weight_decay, decay = c->decay_factor;
    const ACC sign = c->grad_sign;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
        /* decoupled weight decay (decay = 1 otherwise); coupled and decoupled never meet */
        const ACC p = load(param, i) * decay;
        const ACC g = wb_grad(grad, i, p, 1, sign, weight_decay, 0, coupled);
        /* v updated before the switch too: the rectified steps read its whole history */
        ACC m, v;
        wb_adam_moments(exp_avg, exp_avg_sq, i, g, w, beta2, one_minus_beta2, &m, &v);
        if (rectified)
            store(param, i, p + neg_step_size * m / (wb_sqrt(v) + eps));
        else
            store(param, i, p + neg_step_size * m);
    }
}

static void radam_range(const void *raw, int64_t t, int64_t begin, int64_t end) {
    const radam_ctx *c = raw;
#define CASE(b) \
    case b: radam_loop(c, t, begin, end, WB_BIT(b, 1), WB_BIT(b, 0)); break;
    switch (c->rectified[t] << 1 | c->coupled) { WB_CASES_4(CASE) }
#undef CASE
}

WB_EXPORT(radam)(const int64_t *table, int64_t n, const double *hyper, const int64_t *flags,
                 int num_threads) {
    const double lr = hyper[WB_H_LR], beta1 = hyper[WB_H_BETA1], beta2 = hyper[WB_H_BETA2];
    const double weight_decay = hyper[WB_H_WEIGHT_DECAY];
    const int decoupled = (int)flags[WB_F_DECOUPLED_WEIGHT_DECAY];
    /* rho_t is the difference of two numbers near rho_inf (2e3 for the default beta2), compared
     * with 5: fp64, with Python's pow, as the forloop backend computes it on the host */
    const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    const int64_t m = n > 0 ? n : 1;
    ACC neg_step_size[m];
    unsigned char rectified[m];
    for (int64_t t = 0; t < n; ++t) {
        const double step = wb_increment_step(table[WB_ROW_STEP * n + t], flags[WB_F_STEP_DTYPE]);
        const double bias_correction1 = 1.0 - pow(beta1, step);
        const double beta2_t = pow(beta2, step);
        const double bias_correction2 = 1.0 - beta2_t;
        const double rho_t = rho_inf - 2.0 * step * beta2_t / bias_correction2;
        rectified[t] = rho_t > 5.0;
        if (rectified[t]) {
            /* r_t is NaN for rho_t in (2, 4): only formed past the switch */
            const double r = pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                                     ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t),
                                 0.5);
            const double size = lr * r * pow(bias_correction2, 0.5);
            neg_step_size[t] = (ACC)(-size / bias_correction1);
        } else {
            neg_step_size[t] = (ACC)(-lr / bias_correction1);
        }
    }
    const radam_ctx ctx = {
        .param = wb_role(table, n, WB_ROW_PARAM),
        .grad = wb_role(table, n, WB_ROW_GRAD),
        .exp_avg = wb_role(table, n, WB_ROW_EXP_AVG),
        .exp_avg_sq = wb_role(table, n, WB_ROW_EXP_AVG_SQ),
        .neg_step_size = neg_step_size, .rectified = rectified,
        .one_minus_beta1 = (ACC)(1.0 - beta1), .beta2 = (ACC)beta2,
        .one_minus_beta2 = (ACC)(1.0 - beta2), .eps = (ACC)hyper[WB_H_EPS],
        .weight_decay = (ACC)weight_decay,
        .decay_factor = decoupled && weight_decay != 0 ? (ACC)hyper[WB_H_DECAY_FACTOR] : (ACC)1,
        .grad_sign = flags[WB_F_MAXIMIZE] ? (ACC)-1 : (ACC)1,
        .coupled = !decoupled && weight_decay != 0,
    };
    wb_parallel(table + WB_ROWS * n, n, num_threads, radam_range, &ctx);
}
