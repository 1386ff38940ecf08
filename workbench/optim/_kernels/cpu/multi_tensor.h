/* The CPU side of the fused backend: one OpenMP parallel region over many tensors.
 *
 * Every kernel here is compiled once per storage dtype (build.py passes -DWB_DTYPE_*) and
 * exports, per dtype, `void <kernel>_<dtype>(const int64_t *table, int64_t n, const double *hyper,
 * const int64_t *flags, int num_threads)`, which updates the n tensors of one (device, dtype)
 * group in one call:
 *
 *   table:  [role 0 pointers | role 1 pointers | ... | scalar rows | numels], one int64 entry per
 *           tensor in each row; roles are the parallel tensor lists (param, grad, state), scalar
 *           rows point at per-tensor 0-dim tensors (the step counters)
 *   hyper:  the optimizer's float hyperparameters, in the order its Python side packs them
 *   flags:  its integer flags, then one dtype code per scalar row (WB_STEP_F32 / WB_STEP_F64)
 *
 * Why not one parallel_for per tensor, as ATen's fused CPU kernels do: each ends in a barrier,
 * and each small tensor is split in as many pieces as there are threads. Here the tensors are
 * treated as one concatenation and each thread takes one contiguous stretch of it, with one
 * barrier at the end. Stretches are cut at multiples of a cache line's worth of elements: for
 * 64-byte aligned tensors whose lengths are multiples of that (the usual case), no two threads
 * write one line.
 */
#ifndef WB_MULTI_TENSOR_H
#define WB_MULTI_TENSOR_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <omp.h>

/* ---- storage dtypes: T is what memory holds, ACC what the math runs in -------------------- */

#if defined(WB_DTYPE_F32)
typedef float T;
typedef float ACC;
#define WB_SUFFIX f32
static inline ACC load(const T *p, int64_t i) { return p[i]; }
static inline void store(T *p, int64_t i, ACC x) { p[i] = x; }
#elif defined(WB_DTYPE_F64)
typedef double T;
typedef double ACC;
#define WB_SUFFIX f64
static inline ACC load(const T *p, int64_t i) { return p[i]; }
static inline void store(T *p, int64_t i, ACC x) { p[i] = x; }
#elif defined(WB_DTYPE_BF16)
/* bf16 and fp16 compute in fp32 and round once when stored, as the Triton kernels do */
typedef uint16_t T;
typedef float ACC;
#define WB_SUFFIX bf16
static inline ACC load(const T *p, int64_t i) {
    uint32_t bits = (uint32_t)p[i] << 16;
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}
static inline void store(T *p, int64_t i, ACC x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    if (x != x) { /* NaN stays NaN (torch's canonical one): rounding could carry it to inf */
        p[i] = 0x7FC0;
        return;
    }
    bits += 0x7FFF + ((bits >> 16) & 1); /* round to nearest, ties to even */
    p[i] = (uint16_t)(bits >> 16);
}
#elif defined(WB_DTYPE_F16)
typedef _Float16 T;
typedef float ACC;
#define WB_SUFFIX f16
static inline ACC load(const T *p, int64_t i) { return (float)p[i]; }
static inline void store(T *p, int64_t i, ACC x) { p[i] = (_Float16)x; }
#else
#error "compile with one of -DWB_DTYPE_F32, -DWB_DTYPE_F64, -DWB_DTYPE_BF16, -DWB_DTYPE_F16"
#endif

/* square root in the math dtype */
static inline ACC wb_sqrt(ACC x) { return sizeof(ACC) == sizeof(float) ? sqrtf(x) : sqrt(x); }

/* torch.lerp's formula for a scalar weight (ATen's): the form that keeps the result exact at the
 * end closer to the weight */
static inline ACC wb_lerp(ACC start, ACC end, ACC weight) {
    return weight < (ACC)0.5 ? start + weight * (end - start)
                             : end - (end - start) * ((ACC)1 - weight);
}

#define WB_CONCAT_(a, b) a##_##b
#define WB_CONCAT(a, b) WB_CONCAT_(a, b)
/* the exported name of kernel `name` for this dtype: adam -> adam_f32 */
#define WB_EXPORT(name) __attribute__((visibility("default"))) void WB_CONCAT(name, WB_SUFFIX)

/* ---- specialized loops ---------------------------------------------------------------------
 * A kernel's flags that decide which memory a loop touches (AMSGrad's extra state, GradScaler's
 * unscaled grads written back) must not be branches inside a vectorized loop: the compiler turns
 * them into masked loads and stores of the absent tensors, which some CPUs serve through a slow
 * microcode path (seen here: 5x slower on an AMD EPYC). Nor may "add 0 * param" stand for "no
 * weight decay" (inf * 0 is NaN). So each kernel writes one always-inlined loop taking its flags
 * as arguments and dispatches a runtime bit set to copies specialized at compile time:
 *     switch (bits) { WB_CASES_8(CASE) }   with   #define CASE(b) case b: loop(..., b); break;
 */
#define WB_CASES_2(CASE) CASE(0) CASE(1)
#define WB_CASES_4(CASE) WB_CASES_2(CASE) CASE(2) CASE(3)
#define WB_CASES_8(CASE) WB_CASES_4(CASE) CASE(4) CASE(5) CASE(6) CASE(7)
#define WB_CASES_16(CASE) \
    WB_CASES_8(CASE) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15)
#define WB_CASES_32(CASE)                                                                       \
    WB_CASES_16(CASE) CASE(16) CASE(17) CASE(18) CASE(19) CASE(20) CASE(21) CASE(22) CASE(23) \
        CASE(24) CASE(25) CASE(26) CASE(27) CASE(28) CASE(29) CASE(30) CASE(31)
/* `static void <name>_range(...)` for a kernel whose loop is specialized on one flag alone:
 * <name>_loop(c, t, begin, end, flag) with `flag` (an expression over the <name>_ctx `c`) 0 or 1 */
#define WB_RANGE_ON(name, flag)                                                              \
    static void name##_range(const void *raw, int64_t t, int64_t begin, int64_t end) {      \
        const name##_ctx *c = raw;                                                           \
        if (flag)                                                                            \
            name##_loop(c, t, begin, end, 1);                                                \
        else                                                                                 \
            name##_loop(c, t, begin, end, 0);                                                \
    }
/* bit `k` of a case number, as a compile-time flag */
#define WB_BIT(bits, k) (((bits) >> (k)) & 1)
#define WB_INLINE static inline __attribute__((always_inline))

/* ---- the gradient as every update sees it ----------------------------------------------------
 * Unscaled by torch.amp.GradScaler's scale (and written back, as torch's fused kernels do: the
 * caller sees the true gradient afterwards), negated to maximize (sign = -1), plus coupled
 * weight decay, in torch.optim's order. `unscale` and `coupled` are compile-time flags of the
 * caller's specialized loop. */
WB_INLINE ACC wb_grad(T *restrict grad, int64_t i, ACC param, ACC scale, ACC sign,
                      ACC weight_decay, const int unscale, const int coupled) {
    ACC g = load(grad, i);
    if (unscale) {
        g = g / scale;
        store(grad, i, g);
    }
    g = g * sign;
    if (coupled) g = g + weight_decay * param;
    return g;
}

/* ---- Adam's moments (Adam, NAdam and RAdam keep them alike) --------------------------------
 * exp_avg lerps toward g; exp_avg_sq decays by beta2 and gains (1 - beta2) * g * g, torch.optim's
 * order. Both are stored; their new values come back through *m and *v. */
WB_INLINE void wb_adam_moments(T *restrict exp_avg, T *restrict exp_avg_sq, int64_t i, ACC g,
                               ACC one_minus_beta1, ACC beta2, ACC one_minus_beta2, ACC *m,
                               ACC *v) {
    *m = wb_lerp(load(exp_avg, i), g, one_minus_beta1);
    *v = load(exp_avg_sq, i) * beta2 + one_minus_beta2 * g * g;
    store(exp_avg, i, *m);
    store(exp_avg_sq, i, *v);
}

/* ---- per-tensor step counters (0-dim fp32 or fp64 tensors, as torch.optim keeps them) ----- */

enum { WB_STEP_F32 = 0, WB_STEP_F64 = 1 };

/* Add one to the step counter at `address` and return the new count. */
static inline double wb_increment_step(int64_t address, int64_t step_dtype) {
    if (step_dtype == WB_STEP_F64) {
        double *step = (double *)(intptr_t)address;
        return *step += 1.0;
    }
    float *step = (float *)(intptr_t)address;
    return *step += 1.0f;
}

/* Add one to each of the n step counters in `row` (the table's step row): for the kernels whose
 * update does not read them, which torch.optim counts all the same. */
static inline void wb_increment_steps(const int64_t *row, int64_t n, int64_t step_dtype) {
    for (int64_t t = 0; t < n; ++t) wb_increment_step(row[t], step_dtype);
}

/* The per-tensor scalar at `address` (fp32 or fp64, by `dtype`), as Tensor.item() reads it. */
static inline double wb_read_scalar(int64_t address, int64_t dtype) {
    if (dtype == WB_STEP_F64) return *(const double *)(intptr_t)address;
    return *(const float *)(intptr_t)address;
}

/* Store `value` into the per-tensor scalar at `address` as fill_ / copy_ would: rounded once to
 * its dtype. */
static inline void wb_write_scalar(int64_t address, int64_t dtype, double value) {
    if (dtype == WB_STEP_F64)
        *(double *)(intptr_t)address = value;
    else
        *(float *)(intptr_t)address = (float)value;
}

/* Multiply the per-tensor scalar at `address` by `factor` as torch's 0-dim `mul_` would (in the
 * scalar's own dtype) and return the new value. */
static inline double wb_scale_scalar(int64_t address, int64_t dtype, double factor) {
    if (dtype == WB_STEP_F64) {
        double *x = (double *)(intptr_t)address;
        return *x *= factor;
    }
    float *x = (float *)(intptr_t)address;
    return *x *= (float)factor;
}

/* ---- the table's rows ------------------------------------------------------------------------ */

/* Row `row` of the table (n entries): the data pointers of one role, one per tensor. */
static inline T *const *wb_role(const int64_t *table, int64_t n, int64_t row) {
    return (T *const *)(table + row * n);
}

/* ---- the parallel walk over the concatenation of all tensors ------------------------------ */

/* Update elements [begin, end) of tensor `tensor`. */
typedef void (*wb_range_fn)(const void *ctx, int64_t tensor, int64_t begin, int64_t end);

/* Below this many elements in all, one thread does everything: waking the others costs more. */
#define WB_SERIAL_BELOW (1 << 15)

/* Elements per 64-byte cache line, the unit in which the concatenation is cut between threads. */
#define WB_LINE ((int64_t)(64 / sizeof(T)))

static inline int64_t wb_cut(int64_t total, int64_t part, int64_t parts) {
    if (part >= parts) return total;
    int64_t at = (int64_t)((__int128)total * part / parts);
    return at - at % WB_LINE;
}

/* Call `range` over every element of every tensor, split between up to `num_threads` threads. */
static void wb_parallel(const int64_t *numels, int64_t n_tensors, int num_threads,
                        wb_range_fn range, const void *ctx) {
    int64_t total = 0;
    for (int64_t t = 0; t < n_tensors; ++t) total += numels[t];
    if (total < WB_SERIAL_BELOW || num_threads <= 1) {
        for (int64_t t = 0; t < n_tensors; ++t) range(ctx, t, 0, numels[t]);
        return;
    }
#pragma omp parallel num_threads(num_threads)
    {
        const int64_t parts = omp_get_num_threads();
        const int64_t part = omp_get_thread_num();
        const int64_t lo = wb_cut(total, part, parts);
        const int64_t hi = wb_cut(total, part + 1, parts);
        /* walk to the tensor holding element `lo` of the concatenation, then along */
        int64_t t = 0, first = 0;
        while (t < n_tensors && first + numels[t] <= lo) first += numels[t++];
        for (; t < n_tensors && first < hi; first += numels[t++]) {
            const int64_t begin = lo > first ? lo - first : 0;
            const int64_t end = hi < first + numels[t] ? hi - first : numels[t];
            if (begin < end) range(ctx, t, begin, end);
        }
    }
}

#endif /* WB_MULTI_TENSOR_H */
