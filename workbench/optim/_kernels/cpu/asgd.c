/* Fused ASGD on the CPU: param, grad and ax read and written once (ax not read while mu is 1),
 * in the forloop backend's order of operations. Per tensor first, in order: the step advanced,
 * the previous step's eta and mu read (the update uses them), then replaced by the new step's,
 * each in its own dtype. The Triton kernel cannot replace them itself (its programs are not
 * ordered); here they are replaced before any thread starts on the elements. */
#include "multi_tensor.h"

/* hyper, flags and table rows by name: WB_H_*, WB_F_*, WB_ROW_* come from ASGD's UpdateSpec
 * (compiled in as -D options, see workbench/optim/_spec.py). WB_F_LR_FP32: lr is a tensor
 * narrower than fp64, so the new eta is formed in fp32, as the forloop's tensor ops form it from
 * an fp32 lr. */
typedef struct {
    T *const *param, *const *grad, *const *ax;
    /* per tensor, from the previous step's eta and mu: 1 - lambd * eta, -eta, mu, mu != 1 */
    const ACC *shrink, *neg_eta, *mu;
    const unsigned char *averaging;
    ACC weight_decay, grad_sign;
    int coupled;
} asgd_ctx;

/* specialized on averaging (whether ax is read) and coupled weight decay (see multi_tensor.h) */
WB_INLINE void asgd_loop(const asgd_ctx *c, int64_t t, int64_t begin, int64_t end,
                         const int averaging, const int coupled) {
    T *restrict param = c->param[t], *restrict grad = c->grad[t], *restrict ax = c->ax[t];
    const ACC shrink = c->shrink[t], neg_eta = c->neg_eta[t], mu = c->mu[t];
    const ACC weight_decay = c->weight_decay, sign = c->grad_sign;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
        const ACC p0 = load(param, i);
        /* weight decay from the param before it shrinks, as the forloop adds it */
        const ACC g = wb_grad(grad, i, p0, 1, sign, weight_decay, 0, coupled);
        const ACC p = p0 * shrink + neg_eta * g;
        store(param, i, p);
        if (averaging) {
            const ACC a = load(ax, i);
            store(ax, i, a + (p - a) * mu);
        } else {
            store(ax, i, p); /* mu = 1: the average is the iterate */
        }
    }
}

/* Elements per block of the write-only walk over ax (below): 32 cache lines. (Tried on fp32 here:
 * 16 to 64 lines within noise of each other, 256 lines and more lose half the gain.) */
#define ASGD_BLOCK (32 * WB_LINE)

static void asgd_range(const void *raw, int64_t t, int64_t begin, int64_t end) {
    const asgd_ctx *c = raw;
    if (!c->averaging[t]) {
        /* Before averaging starts ax is only written. A line written without being read is still
         * fetched first (write-allocate), but by the store, which the hardware prefetchers (they
         * follow loads) do not run ahead of: measured here, that walk took 35% longer than the
         * averaging one, which reads ax as well (6.9 vs 5.1 ms, 100 x 100k fp32). So the next
         * block's lines of ax are prefetched for writing while this block is updated: 5.2 ms. */
        T *const ax = c->ax[t];
        for (int64_t b = begin; b < end; b += ASGD_BLOCK) {
            const int64_t e = end - b > ASGD_BLOCK ? b + ASGD_BLOCK : end;
            const int64_t ahead = end - e > ASGD_BLOCK ? e + ASGD_BLOCK : end;
            for (int64_t j = e; j < ahead; j += WB_LINE) __builtin_prefetch(ax + j, 1, 3);
            if (c->coupled)
                asgd_loop(c, t, b, e, 0, 1);
            else
                asgd_loop(c, t, b, e, 0, 0);
        }
        return;
    }
#define CASE(b) \
    case b: asgd_loop(c, t, begin, end, WB_BIT(b, 1), WB_BIT(b, 0)); break;
    switch (c->averaging[t] << 1 | c->coupled) { WB_CASES_4(CASE) }
#undef CASE
}

/* eta of step `step`: lr / (1 + lambd * lr * step)^alpha, in fp64 as Python forms it from a
 * float lr, or in fp32 as torch forms it from an fp32 tensor lr */
static double asgd_eta(double lr, double lambd, double alpha, double step, int lr_fp32) {
    if (lr_fp32) {
        const float lr32 = (float)lr;
        return lr32 / powf(1.0f + (float)lambd * lr32 * (float)step, (float)alpha);
    }
    return lr / pow(1.0 + lambd * lr * step, alpha);
}

WB_EXPORT(asgd)(const int64_t *table, int64_t n, const double *hyper, const int64_t *flags,
                int num_threads) {
    const double lr = hyper[WB_H_LR], lambd = hyper[WB_H_LAMBD], alpha = hyper[WB_H_ALPHA];
    const double t0 = hyper[WB_H_T0], weight_decay = hyper[WB_H_WEIGHT_DECAY];
    const int64_t step_dtype = flags[WB_F_STEP_DTYPE], mu_dtype = flags[WB_F_MU_DTYPE];
    const int64_t eta_dtype = flags[WB_F_ETA_DTYPE];
    const int64_t m = n > 0 ? n : 1;
    ACC shrink[m], neg_eta[m], mu[m];
    unsigned char averaging[m];
    for (int64_t t = 0; t < n; ++t) {
        const double step = wb_increment_step(table[WB_ROW_STEP * n + t], step_dtype);
        const int64_t mu_at = table[WB_ROW_MU * n + t], eta_at = table[WB_ROW_ETA * n + t];
        const double old_eta = wb_read_scalar(eta_at, eta_dtype);
        const double old_mu = wb_read_scalar(mu_at, mu_dtype);
        shrink[t] = (ACC)(1.0 - lambd * old_eta);
        neg_eta[t] = (ACC)(-old_eta);
        mu[t] = (ACC)old_mu;
        averaging[t] = old_mu != 1.0;
        wb_write_scalar(eta_at, eta_dtype, asgd_eta(lr, lambd, alpha, step, (int)flags[WB_F_LR_FP32]));
        wb_write_scalar(mu_at, mu_dtype, 1.0 / (step - t0 > 1.0 ? step - t0 : 1.0));
    }
    const asgd_ctx ctx = {
        .param = wb_role(table, n, WB_ROW_PARAM),
        .grad = wb_role(table, n, WB_ROW_GRAD),
        .ax = wb_role(table, n, WB_ROW_AX),
        .shrink = shrink, .neg_eta = neg_eta, .mu = mu, .averaging = averaging,
        .weight_decay = (ACC)weight_decay, .grad_sign = flags[WB_F_MAXIMIZE] ? (ACC)-1 : (ACC)1,
        .coupled = weight_decay != 0,
    };
    wb_parallel(table + WB_ROWS * n, n, num_threads, asgd_range, &ctx);
}
