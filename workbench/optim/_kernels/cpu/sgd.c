/* Fused SGD on the CPU: param, grad and the momentum buffer read and written once, in the forloop
 * backend's order of operations. */
#include "multi_tensor.h"

/* hyper: lr, momentum, dampening, weight_decay, grad_scale (0: none)
 * flags: has_momentum, first_step (the buffers are new: written, not read), nesterov, maximize
 * table roles: param, grad, [momentum_buffer] (no step counters) */
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
    const int has_momentum = (int)flags[0];
    const sgd_ctx ctx = {
        .param = (T *const *)(table), .grad = (T *const *)(table + n),
        .buf = (T *const *)(table + 2 * n),
        .neg_lr = (ACC)(-hyper[0]), .momentum = (ACC)hyper[1],
        .one_minus_dampening = (ACC)(1.0 - hyper[2]), .weight_decay = (ACC)hyper[3],
        .grad_scale = (ACC)hyper[4], .grad_sign = flags[3] ? (ACC)-1 : (ACC)1,
        .has_momentum = has_momentum, .first_step = has_momentum && flags[1],
        .nesterov = has_momentum && flags[2], .unscale = hyper[4] != 0, .coupled = hyper[3] != 0,
    };
    wb_parallel(table + (has_momentum ? 3 : 2) * n, n, num_threads, sgd_range, &ctx);
}
