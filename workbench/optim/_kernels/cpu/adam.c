/* Fused Adam / AdamW on the CPU: each element of param, grad and state read and written once.
 *
 * The math is the forloop backend's, in its order (lerp for the first moment, sqrt(v) / sqrt(bc2)
 * + eps, then step_size * m / denom): fp32 and fp64 results stay within an ulp or two of it;
 * bf16/fp16 compute in fp32 and round once when stored.
 */
#include "multi_tensor.h"

/* hyper, flags and table rows by name: WB_H_*, WB_F_*, WB_ROW_* come from Adam's UpdateSpec
 * (compiled in as -D options, see workbench/optim/_spec.py). WB_H_GRAD_SCALE is GradScaler's
 * scale (0: none); WB_H_DECAY_FACTOR is 1 - lr * weight_decay, in lr's dtype: computed by the
 * caller. Without amsgrad the max_exp_avg_sq row holds stand-ins, never read. */
typedef struct {
    T *const *param, *const *grad, *const *exp_avg, *const *exp_avg_sq, *const *max_exp_avg_sq;
    const ACC *neg_step_size, *bc2_sqrt; /* per tensor, from its own step */
    ACC one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor, grad_scale;
    ACC grad_sign; /* -1 to maximize */
    int amsgrad, coupled, unscale;
} adam_ctx;

/* specialized on amsgrad, unscale, coupled (see multi_tensor.h) */
WB_INLINE void adam_loop(const adam_ctx *c, int64_t t, int64_t begin, int64_t end,
                         const int amsgrad, const int unscale, const int coupled) {
    T *restrict param = c->param[t], *restrict grad = c->grad[t];
    T *restrict exp_avg = c->exp_avg[t], *restrict exp_avg_sq = c->exp_avg_sq[t];
    T *restrict max_sq = amsgrad ? c->max_exp_avg_sq[t] : 0;
    const ACC neg_step_size = c->neg_step_size[t], bc2_sqrt = c->bc2_sqrt[t];
    const ACC w = c->one_minus_beta1, beta2 = c->beta2, one_minus_beta2 = c->one_minus_beta2;
    const ACC eps = c->eps, weight_decay = c->weight_decay, decay = c->decay_factor;
    const ACC scale = c->grad_scale, sign = c->grad_sign;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
        /* decoupled weight decay (decay = 1 otherwise); coupled and decoupled never meet */
        const ACC p = load(param, i) * decay;
        const ACC g = wb_grad(grad, i, p, scale, sign, weight_decay, unscale, coupled);
        ACC m, v;
        wb_adam_moments(exp_avg, exp_avg_sq, i, g, w, beta2, one_minus_beta2, &m, &v);
        ACC second = v;
        if (amsgrad) {
            const ACC old = load(max_sq, i);
            second = (old > v || old != old) ? old : v; /* torch.maximum: NaN wins */
            store(max_sq, i, second);
        }
        const ACC denom = wb_sqrt(second) / bc2_sqrt + eps;
        store(param, i, p + neg_step_size * m / denom);
    }
}

static void adam_range(const void *raw, int64_t t, int64_t begin, int64_t end) {
    const adam_ctx *c = raw;
#define CASE(b) \
    case b: adam_loop(c, t, begin, end, WB_BIT(b, 2), WB_BIT(b, 1), WB_BIT(b, 0)); break;
    switch (c->amsgrad << 2 | c->unscale << 1 | c->coupled) { WB_CASES_8(CASE) }
#undef CASE
}

WB_EXPORT(adam)(const int64_t *table, int64_t n, const double *hyper, const int64_t *flags,
                int num_threads) {
    const int amsgrad = (int)flags[WB_F_AMSGRAD], decoupled = (int)flags[WB_F_DECOUPLED_WEIGHT_DECAY];
    const double lr = hyper[WB_H_LR], beta1 = hyper[WB_H_BETA1], beta2 = hyper[WB_H_BETA2];
    const double weight_decay = hyper[WB_H_WEIGHT_DECAY], grad_scale = hyper[WB_H_GRAD_SCALE];
    ACC neg_step_size[n > 0 ? n : 1], bc2_sqrt[n > 0 ? n : 1];
    for (int64_t t = 0; t < n; ++t) {
        const double step = wb_increment_step(table[WB_ROW_STEP * n + t], flags[WB_F_STEP_DTYPE]);
        neg_step_size[t] = (ACC)(-(lr / (1.0 - pow(beta1, step))));
        bc2_sqrt[t] = (ACC)pow(1.0 - pow(beta2, step), 0.5); /* Python's `** 0.5` */
    }
    const adam_ctx ctx = {
        .param = wb_role(table, n, WB_ROW_PARAM),
        .grad = wb_role(table, n, WB_ROW_GRAD),
        .exp_avg = wb_role(table, n, WB_ROW_EXP_AVG),
        .exp_avg_sq = wb_role(table, n, WB_ROW_EXP_AVG_SQ),
        .max_exp_avg_sq = wb_role(table, n, WB_ROW_MAX_EXP_AVG_SQ),
        .neg_step_size = neg_step_size, .bc2_sqrt = bc2_sqrt,
        .one_minus_beta1 = (ACC)(1.0 - beta1), .beta2 = (ACC)beta2,
        .one_minus_beta2 = (ACC)(1.0 - beta2), .eps = (ACC)hyper[WB_H_EPS],
        .weight_decay = (ACC)weight_decay,
        .decay_factor = decoupled ? (ACC)hyper[WB_H_DECAY_FACTOR] : (ACC)1,
        .grad_scale = (ACC)grad_scale, .grad_sign = flags[WB_F_MAXIMIZE] ? (ACC)-1 : (ACC)1,
        .amsgrad = amsgrad, .coupled = !decoupled && weight_decay != 0, .unscale = grad_scale != 0,
    };
    wb_parallel(table + WB_ROWS * n, n, num_threads, adam_range, &ctx);
}
