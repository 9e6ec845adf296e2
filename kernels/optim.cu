// optim.cu: the mixed-precision optimizer step over every parameter tensor at once.
//   amp_flag_clear     flag = 0 (one thread; keeps the step free of host copies)
//   amp_check_f32      flag = 1 when any gradient of any tensor is Inf or NaN
//   sgd_multi_f32      unless flag: g' = g/loss_scale + wd*w (wd only for decayed tensors),
//                      v = momentum*v + g', w -= lr*v, and the fp16 copy of w, in one pass;
//                      loss_scale from the host, or from the device's AmpState
//   amp_scaler_update  the dynamic loss scale's state machine on the device (one thread), so
//                      that a step needs no host read at all (src/ops/optim.rs, queued steps)
//   step_vars_set      the values that change from one training step to the next (dropout
//                      keys, learning rate) into device memory, where a captured step (a CUDA
//                      graph, whose kernel arguments are fixed) reads them (src/ops/step_vars.rs)
// Multi-tensor launches: the host builds, once, a table of tensor descriptors and a table
// of chunks (tensor, first element), one chunk a block, so ~30 VGG parameter tensors of
// 64 to 100M elements cost one launch and keep every SM busy. Chunks are a multiple of 4
// elements long, so a chunk starts 16-byte aligned whenever its tensor does.
//
// The update is computed in f64 with explicitly rounded operations (no contraction into
// fma) in the reference's order, and rounded to f32 once: the result equals
// reference::sgd_step bit for bit. The step is memory-bound (22 bytes an element), so the
// f64 arithmetic costs nothing measurable.
#include "common.cuh"

// Shared with src/ops/optim.rs (48 bytes, 8-byte aligned fields).
struct OptimTensor {
    float* w;             // fp32 master weights
    float* v;             // momentum
    const float* g;       // gradient (scaled by loss_scale)
    __half* w16;          // fp16 copy of w, or null
    long long n;          // elements
    int decay;            // apply weight decay
    int pad;
};
struct OptimChunk {
    int tensor;
    int pad;
    long long start;
};

#if defined(__CUDACC__)
__device__ __forceinline__ double optim_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double optim_add(double a, double b) { return __dadd_rn(a, b); }
#else
// The emu build compiles with -ffp-contract=off: plain operators round each step.
inline double optim_mul(double a, double b) { return a * b; }
inline double optim_add(double a, double b) { return a + b; }
#endif

// Shared with src/ops/optim.rs (32 bytes, read back as eight 32-bit words).
struct AmpState {
    float scale;
    unsigned clean;     // clean steps since the scale last changed
    unsigned interval;  // clean steps between doublings
    int overflow;       // the last step's flag
    float used;         // the scale the last step ran at
    unsigned pad;
    unsigned long long skipped;
};

// reference::loss_scale_update's rules (src/reference/sgd.rs): on overflow halve, unless the half
// is 0, and count a skip; after `interval` clean steps in a row double, unless the double is not
// finite.
extern "C" __global__ void amp_scaler_update(const int* __restrict__ flag, AmpState* __restrict__ st) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const bool over = *flag != 0;
    st->overflow = over;
    st->used = st->scale;
    if (over) {
        const float h = st->scale * 0.5f;
        if (h > 0.f) st->scale = h;
        st->clean = 0;
        st->skipped += 1;
        return;
    }
    st->clean += 1;
    if (st->clean >= st->interval) {
        st->clean = 0;
        const float d = st->scale * 2.f;
        if (isfinite(d)) st->scale = d;
    }
}

extern "C" __global__ void amp_flag_clear(int* flag) {
    if (blockIdx.x == 0 && threadIdx.x == 0) *flag = 0;
}

extern "C" __global__ void amp_check_f32(const OptimTensor* __restrict__ tensors, const OptimChunk* __restrict__ chunks,
                                         long long chunk_len, int* __restrict__ flag) {
    const OptimChunk c = chunks[blockIdx.x];
    const OptimTensor t = tensors[c.tensor];
    const long long end = min(c.start + chunk_len, t.n);
    bool bad = false;
    long long tail = c.start;
    if ((reinterpret_cast<unsigned long long>(t.g) & 15) == 0) {
        const long long vec_end = c.start + (end - c.start) / 4 * 4;
        for (long long i = c.start + 4 * (long long)threadIdx.x; i < vec_end; i += 4 * (long long)blockDim.x) {
            const float4 g = *reinterpret_cast<const float4*>(t.g + i);
            bad |= !isfinite(g.x) || !isfinite(g.y) || !isfinite(g.z) || !isfinite(g.w);
        }
        tail = vec_end;
    }
    for (long long i = tail + threadIdx.x; i < end; i += blockDim.x) bad |= !isfinite(t.g[i]);
    // Every writer stores the same value, so the order of the atomics does not matter.
    if (bad) atomicOr(flag, 1);
}

__device__ __forceinline__ void sgd_one(float& w, float& v, float g, double loss_scale, double wd, double momentum,
                                        double lr) {
    // Exactly reference::sgd_step: g' = g/ls + wd*w; v' = m*v + g'; w' = w - lr*v'.
    double gp = optim_add((double)g / loss_scale, optim_mul(wd, (double)w));
    double vn = optim_add(optim_mul(momentum, (double)v), gp);
    double wn = optim_add((double)w, -optim_mul(lr, vn));
    w = (float)wn;
    v = (float)vn;
}

extern "C" __global__ void sgd_multi_f32(const OptimTensor* __restrict__ tensors,
                                         const OptimChunk* __restrict__ chunks, long long chunk_len,
                                         const int* __restrict__ skip, float lr, float momentum, float weight_decay,
                                         float loss_scale, const AmpState* __restrict__ amp,
                                         const float* __restrict__ lr_at) {
    // The overflow test of this very step: skipping on the device means no host round
    // trip is needed before the update; the host reads the flag later for the scaler.
    if (skip && *skip) return;
    const OptimChunk c = chunks[blockIdx.x];
    const OptimTensor t = tensors[c.tensor];
    const long long end = min(c.start + chunk_len, t.n);
    const double ls = amp ? amp->scale : loss_scale, m = momentum, eta = lr_at ? *lr_at : lr, wd = t.decay ? (double)weight_decay : 0.0;
    const bool vec = ((reinterpret_cast<unsigned long long>(t.w) | reinterpret_cast<unsigned long long>(t.v) |
                       reinterpret_cast<unsigned long long>(t.g)) & 15) == 0 &&
                     (reinterpret_cast<unsigned long long>(t.w16) & 3) == 0;
    long long tail = c.start;
    if (vec) {
        const long long vec_end = c.start + (end - c.start) / 4 * 4;
        for (long long i = c.start + 4 * (long long)threadIdx.x; i < vec_end; i += 4 * (long long)blockDim.x) {
            float4 w = *reinterpret_cast<const float4*>(t.w + i);
            float4 v = *reinterpret_cast<const float4*>(t.v + i);
            const float4 g = *reinterpret_cast<const float4*>(t.g + i);
            sgd_one(w.x, v.x, g.x, ls, wd, m, eta);
            sgd_one(w.y, v.y, g.y, ls, wd, m, eta);
            sgd_one(w.z, v.z, g.z, ls, wd, m, eta);
            sgd_one(w.w, v.w, g.w, ls, wd, m, eta);
            *reinterpret_cast<float4*>(t.w + i) = w;
            *reinterpret_cast<float4*>(t.v + i) = v;
            if (t.w16) {
                __half2* h = reinterpret_cast<__half2*>(t.w16 + i);
                h[0] = __floats2half2_rn(w.x, w.y);
                h[1] = __floats2half2_rn(w.z, w.w);
            }
        }
        tail = vec_end;
    }
    for (long long i = tail + threadIdx.x; i < end; i += blockDim.x) {
        float w = t.w[i], v = t.v[i];
        sgd_one(w, v, t.g[i], ls, wd, m, eta);
        t.w[i] = w;
        t.v[i] = v;
        if (t.w16) t.w16[i] = __float2half_rn(w);
    }
}

// Shared with src/ops/step_vars.rs (32 bytes).
struct StepVars {
    unsigned long long dropout_key[2];  // hidden FC layers 0 and 1
    float lr;
    float pad[3];
};

// One thread: v = (key0, key1, lr), passed by value from the host before each replay.
extern "C" __global__ void step_vars_set(StepVars* v, unsigned long long key0, unsigned long long key1, float lr) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        v->dropout_key[0] = key0;
        v->dropout_key[1] = key1;
        v->lr = lr;
    }
}
