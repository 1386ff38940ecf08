/* Fused SGD on the CPU: param, grad and the momentum buffer read and written once, in the forloop
 * backend's order of operations. */
#include "multi_tensor.h"

/* hyper, flags and table rows by name: WB_H_*, WB_F_*, WB_ROW_* come from SGD's UpdateSpec
 * (compiled in as -D options, see workbench/optim/_spec.py). WB_H_GRAD_SCALE is GradScaler's
 * scale (0: none); WB_F_FIRST_STEP: the buffers are new (written, not read). Without momentum
 * the momentum_buffer row holds stand-ins, never read. No step counters. */
typedef struct {
    T *const *param, *const *grad, *const *buf;
    ACC neg_lr, momentum, one_minus_dampening, weight_decay, grad_scale, grad_sign;
    int has_momentum, first_step, nesterov, unscale, coupled;
} sgd_ctx;

/* specialized on every flag but maximize (see multi_tensor.h) */
WB_INLINE void sgd_loop(const sgd_ctx *c, int64_t t, int64_t begin, int64_t end,
                        const int has_momentum, const int first_step, const int nesterov,
                        const int unscale, const int coupled) {
    T *restrict param = c->param[t], *restrict grad = c->grad[t];
    T *restrict buf = has_momentum ? c->buf[t] : 0;
    const ACC neg_lr = c->neg_lr, momentum = c->momentum, keep = c->one_minus_dampening;
    const ACC weight_decay = c->weight_decay, scale = c->grad_scale, sign = c->grad_sign;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
        const ACC p = load(param, i);
        ACC g = wb_grad(grad, i, p, scale, sign, weight_decay, unscale, coupled);
        if (has_momentum) {
            /* the first step starts the buffer from the gradient itself, as torch.optim does */
            const ACC b = first_step ? g : load(buf, i) * momentum + keep * g;
            store(buf, i, b);
            g = nesterov ? g + momentum * b : b;
        }
        store(param, i, p + neg_lr * g);
    }
}

static void sgd_range(const void *raw, int64_t t, int64_t begin, int64_t end) {
    const sgd_ctx *c = raw;
#define CASE(b)                                                                              \
    case b:                                                                                  \
        sgd_loop(c, t, begin, end, WB_BIT(b, 4), WB_BIT(b, 3), WB_BIT(b, 2), WB_BIT(b, 1), \
                 WB_BIT(b, 0));                                                              \
        break;
    switch (c->has_momentum << 4 | c->first_step << 3 | c->nesterov << 2 | c->unscale << 1 |
            c->coupled) {
        WB_CASES_32(CASE)
    }
#undef CASE
}

WB_EXPORT(sgd)(const int64_t *table, int64_t n, const double *hyper, const int64_t *flags,
               int num_threads) {
    const int has_momentum = (int)flags[WB_F_HAS_MOMENTUM];
    const double weight_decay = hyper[WB_H_WEIGHT_DECAY], grad_scale = hyper[WB_H_GRAD_SCALE];
    const sgd_ctx ctx = {
        .param = wb_role(table, n, WB_ROW_PARAM),
        .grad = wb_role(table, n, WB_ROW_GRAD),
        .buf = wb_role(table, n, WB_ROW_MOMENTUM_BUFFER),
        .neg_lr = (ACC)(-hyper[WB_H_LR]), .momentum = (ACC)hyper[WB_H_MOMENTUM],
        .one_minus_dampening = (ACC)(1.0 - hyper[WB_H_DAMPENING]),
        .weight_decay = (ACC)weight_decay, .grad_scale = (ACC)grad_scale,
        .grad_sign = flags[WB_F_MAXIMIZE] ? (ACC)-1 : (ACC)1, .has_momentum = has_momentum,
        .first_step = has_momentum && flags[WB_F_FIRST_STEP],
        .nesterov = has_momentum && flags[WB_F_NESTEROV], .unscale = grad_scale != 0,
        .coupled = weight_decay != 0,
    };
    wb_parallel(table + WB_ROWS * n, n, num_threads, sgd_range, &ctx);
}
