/* Fused Adadelta on the CPU: each element of param, grad, square_avg and acc_delta read and
 * written once, in the forloop backend's order of operations. The step counters are advanced
 * here too, though the update does not read them: torch.optim keeps counting them. */
#include "multi_tensor.h"

/* hyper: lr, rho, eps, weight_decay
 * flags: maximize, step dtype
 * table roles: param, grad, square_avg, acc_delta, step */
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

static void adadelta_range(const void *raw, int64_t t, int64_t begin, int64_t end) {
    const adadelta_ctx *c = raw;
    if (c->coupled)
        adadelta_loop(c, t, begin, end, 1);
    else
        adadelta_loop(c, t, begin, end, 0);
}

WB_EXPORT(adadelta)(const int64_t *table, int64_t n, const double *hyper, const int64_t *flags,
                    int num_threads) {
    for (int64_t t = 0; t < n; ++t) wb_increment_step(table[4 * n + t], flags[1]);
    const double rho = hyper[1];
    const adadelta_ctx ctx = {
        .param = (T *const *)(table), .grad = (T *const *)(table + n),
        .square_avg = (T *const *)(table + 2 * n), .acc_delta = (T *const *)(table + 3 * n),
        .neg_lr = (ACC)(-hyper[0]), .rho = (ACC)rho, .one_minus_rho = (ACC)(1.0 - rho),
        .eps = (ACC)hyper[2], .weight_decay = (ACC)hyper[3],
        .grad_sign = flags[0] ? (ACC)-1 : (ACC)1, .coupled = hyper[3] != 0,
    };
    wb_parallel(table + 5 * n, n, num_threads, adadelta_range, &ctx);
}
