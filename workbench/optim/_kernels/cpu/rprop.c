/* Fused Rprop on the CPU: param, grad, prev and step_size read and written once, in the forloop
 * backend's order of operations; the steps (only counted: the update does not use them) advanced
 * first. */
#include "multi_tensor.h"

/* hyper, flags and table rows by name: WB_H_*, WB_F_*, WB_ROW_* come from Rprop's UpdateSpec
 * (compiled in as -D options, see workbench/optim/_spec.py) */
typedef struct {
    T *const *param, *const *grad, *const *prev, *const *step_size;
    ACC etaminus, etaplus, step_size_min, step_size_max, grad_sign;
} rprop_ctx;

/* No flag changes the memory touched or the math's shape: one loop (maximize is a sign). */
static void rprop_range(const void *raw, int64_t t, int64_t begin, int64_t end) {
    const rprop_ctx *c = raw;
    T *restrict param = c->param[t], *restrict grad = c->grad[t];
    T *restrict prev = c->prev[t], *restrict step_size = c->step_size[t];
    const ACC etaminus = c->etaminus, etaplus = c->etaplus, sign = c->grad_sign;
    const ACC lo = c->step_size_min, hi = c->step_size_max;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
        const ACC g = load(grad, i) * sign;
        /* The product's sign, not the two signs: where it underflows to 0 the step size stays, as
         * in the forloop. A NaN product is neither > 0 nor < 0: torch.sign makes it 0 on the CPU,
         * so the factor is 1 and the gradient is kept. */
        const ACC product = g * load(prev, i);
        const ACC factor = product > 0 ? etaplus : (product < 0 ? etaminus : (ACC)1);
        ACC s = load(step_size, i) * factor;
        /* torch.clamp: NaN stays NaN, and max wins over a larger min */
        s = s < lo ? lo : s;
        s = s > hi ? hi : s;
        /* where the sign flipped, the coordinate stays and the gradient is forgotten */
        const ACC kept = product < 0 ? (ACC)0 : g;
        const ACC direction = kept > 0 ? (ACC)1 : (kept < 0 ? (ACC)-1 : (ACC)0);
        store(param, i, load(param, i) - direction * s);
        store(prev, i, kept);
        store(step_size, i, s);
    }
}

WB_EXPORT(rprop)(const int64_t *table, int64_t n, const double *hyper, const int64_t *flags,
                 int num_threads) {
    wb_increment_steps(table + WB_ROW_STEP * n, n, flags[WB_F_STEP_DTYPE]);
    const rprop_ctx ctx = {
        .param = wb_role(table, n, WB_ROW_PARAM),
        .grad = wb_role(table, n, WB_ROW_GRAD),
        .prev = wb_role(table, n, WB_ROW_PREV),
        .step_size = wb_role(table, n, WB_ROW_STEP_SIZE),
        .etaminus = (ACC)hyper[WB_H_ETAMINUS], .etaplus = (ACC)hyper[WB_H_ETAPLUS],
        .step_size_min = (ACC)hyper[WB_H_STEP_SIZE_MIN],
        .step_size_max = (ACC)hyper[WB_H_STEP_SIZE_MAX],
        .grad_sign = flags[WB_F_MAXIMIZE] ? (ACC)-1 : (ACC)1,
    };
    wb_parallel(table + WB_ROWS * n, n, num_threads, rprop_range, &ctx);
}
