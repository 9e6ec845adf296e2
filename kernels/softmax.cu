// softmax.cu: softmax cross-entropy over [batch][classes] logits, forward and backward in
// one pass, plus the top-1 / top-5 counts, as src/reference/softmax.rs defines them.
//   softmax_xent_f16 / softmax_xent_f32   one block a row: per-row loss, rank of the label,
//                                         dlogits = (softmax - onehot) * loss_scale / batch (fp16)
//   softmax_xent_finish                   one block: batch-mean loss, hit counts and the
//                                         bad-label report into the status words
//   softmax_fwd_f16 / softmax_fwd_f32     forward only, for evaluation: one block a row,
//                                         probabilities p = exp(z - max) / sum (fp32)
// Every reduction has a fixed shape (thread-strided partials, a shuffle butterfly, warps
// summed in index order), so the results are bit-identical run to run and schedule to
// schedule; the batch mean is summed in f64 by one block in row order, never by atomics.
//
// Accuracy. The label's gradient p_label - 1 cancels badly when the net is confident, so
// it is computed as -(sum of the other classes' exp) / sum, and the loss likewise as
// log1p(others / e_label): both stay relatively accurate down to losses of 1e-30, where
// `lse - z_label` in fp32 would be all rounding error.
#include "common.cuh"

// Status words (int32) shared with src/ops/softmax.rs.
#define XENT_LOSS 0         // f32 bits: mean loss of the last call
#define XENT_TOP1 1         // rows of the last call whose label is the top-1
#define XENT_TOP5 2         // ... among the top 5
#define XENT_ROWS 3         // batch of the last call
#define XENT_BAD 4          // sticky: bad-label rows since the status was cleared
#define XENT_BAD_ROW 5      // sticky: the first bad row (of the first call that had one)
#define XENT_BAD_LABEL 6    // sticky: its label
#define XENT_BAD_CLASSES 7  // sticky: the class count it was checked against

// row_rank values: classes ranked above the label, or one of these markers.
#define XENT_RANK_BAD (-1)            // label outside [0, classes)
#define XENT_RANK_NAN 0x7fffffff      // non-finite label logit: never a hit

__device__ __forceinline__ float xent_load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float xent_load(const float* p) { return *p; }

__device__ __forceinline__ float xent_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float xent_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ int xent_warp_isum(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Block-wide reductions for blockDim.x a multiple of 32 (at most 1024); every thread gets
// the result. Each call site passes its own 32-slot `scratch`, never reused within the
// kernel: then one barrier (between the warps' writes and the reads) is all it takes, and
// no later reduction can overwrite slots that a slow warp has yet to read.
__device__ float xent_block_sum(float v, float* scratch) {
    v = xent_warp_sum(v);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) s += scratch[w];
    return s;
}
__device__ float xent_block_max(float v, float* scratch) {
    v = xent_warp_max(v);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    float m = scratch[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) m = fmaxf(m, scratch[w]);
    return m;
}
__device__ int xent_block_isum(int v, int* scratch) {
    v = xent_warp_isum(v);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    int s = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) s += scratch[w];
    return s;
}

// One row per block. Three strided sweeps over the row (the second and third hit L1/L2:
// a 1000-class fp16 row is 2 KB): max and rank, sums of exp, gradient.
template <typename T>
__device__ void xent_row(const T* __restrict__ logits, const int* __restrict__ labels, __half* __restrict__ dlogits,
                         float* __restrict__ row_loss, int* __restrict__ row_rank, int classes, float coef) {
    __shared__ float max_slots[32], sum_slots[32], others_slots[32];
    __shared__ int above_slots[32];
    const int row = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
    const T* z = logits + (long long)row * classes;
    __half* dz = dlogits ? dlogits + (long long)row * classes : nullptr;
    const int label = labels[row];

    // A bad label is the host's to report (finish kernel -> status -> check()); nothing is
    // read at it. The row gets a NaN loss, so the mean shows it too, and a NaN gradient: the
    // last layer's weight and bias gradients are then NaN (deeper ones may be masked by the
    // ReLUs), and the optimizer's overflow check, which covers every gradient, skips the step
    // (weights and momentum untouched) instead of applying an update from a batch the caller
    // did not mean. That step halves the loss scale, as any NaN does.
    if (label < 0 || label >= classes) {
        if (dz)
            for (int j = tid; j < classes; j += nt) dz[j] = __ushort_as_half((unsigned short)0x7e00);
        if (tid == 0) {
            row_loss[row] = __int_as_float(0x7fffffff);
            row_rank[row] = XENT_RANK_BAD;
        }
        return;
    }
    const float zl = xent_load(z + label);

    // Sweep 1: the row maximum (fmaxf skips NaN; a NaN logit makes the sums NaN below, as
    // in the reference) and the reference's rank: classes other than the label whose
    // logit is strictly larger or NaN, or equal with a lower index (ties go to the lower
    // class, as argmax breaks them: an untrained or collapsed net with equal logits must
    // not score every row as a hit).
    float m = __int_as_float(0xff800000);
    int above = 0;
    for (int j = tid; j < classes; j += nt) {
        float v = xent_load(z + j);
        m = fmaxf(m, v);
        above += (j < label ? !(v < zl) : (j > label && !(v <= zl))) ? 1 : 0;
    }
    m = xent_block_max(m, max_slots);
    above = xent_block_isum(above, above_slots);

    // Sweep 2: s = sum exp(z - m) and the same sum without the label's term.
    float s = 0.f, others = 0.f;
    for (int j = tid; j < classes; j += nt) {
        float e = expf(xent_load(z + j) - m);
        s += e;
        others += j != label ? e : 0.f;
    }
    s = xent_block_sum(s, sum_slots);
    others = xent_block_sum(others, others_slots);

    const float el = expf(zl - m);
    if (tid == 0) {
        // loss = lse - z_label = log(s / e_label) = log1p(others / e_label). Once e_label
        // is tiny (the label is hopeless) the ratio could overflow; then the plain form,
        // whose (m - z_label) >= 60 term dominates its rounding error.
        float loss = zl - m > -60.f ? log1pf(others / el) : (m - zl) + logf(s);
        row_loss[row] = loss;
        // An infinite label logit is an fp16 overflow (its loss is NaN), not a confident
        // answer: a miss, as a NaN is and as eval's posteriors (NaN there) count it.
        row_rank[row] = isfinite(zl) ? above : XENT_RANK_NAN;
    }

    // Sweep 3: dz_j = (p_j - [j == label]) * loss_scale / batch, p_label - 1 = -others / s.
    if (dz) {
        const float inv_s = 1.f / s;
        for (int j = tid; j < classes; j += nt) {
            float p = j == label ? -others * inv_s : expf(xent_load(z + j) - m) * inv_s;
            dz[j] = __float2half_rn(p * coef);
        }
    }
}

// coef = loss_scale / batch, or, when `scale` is given (a loss scale kept on the device by
// optim.cu's amp_scaler_update), *scale / batch: the same f32 division the host does.
extern "C" __global__ void softmax_xent_f16(const __half* __restrict__ logits, const int* __restrict__ labels,
                                            __half* __restrict__ dlogits, float* __restrict__ row_loss,
                                            int* __restrict__ row_rank, int classes, float coef,
                                            const float* __restrict__ scale, int batch) {
    xent_row(logits, labels, dlogits, row_loss, row_rank, classes, scale ? *scale / (float)batch : coef);
}

extern "C" __global__ void softmax_xent_f32(const float* __restrict__ logits, const int* __restrict__ labels,
                                            __half* __restrict__ dlogits, float* __restrict__ row_loss,
                                            int* __restrict__ row_rank, int classes, float coef,
                                            const float* __restrict__ scale, int batch) {
    xent_row(logits, labels, dlogits, row_loss, row_rank, classes, scale ? *scale / (float)batch : coef);
}

// Evaluation's posteriors. The same sweeps as xent_row: the maximum first, so no exp
// overflows whatever the logits' scale, then the sum, then p = e / s, an IEEE division
// (not e * (1/s), a second rounding). From fp16 logits, where z - m is nearly always
// exact in fp32, p is within a few fp32 ulps of the exact softmax.
template <typename T>
__device__ void softmax_row(const T* __restrict__ logits, float* __restrict__ probs, int classes) {
    __shared__ float max_slots[32], sum_slots[32];
    const int tid = threadIdx.x, nt = blockDim.x;
    const T* z = logits + (long long)blockIdx.x * classes;
    float* p = probs + (long long)blockIdx.x * classes;
    float m = __int_as_float(0xff800000);
    for (int j = tid; j < classes; j += nt) m = fmaxf(m, xent_load(z + j));
    m = xent_block_max(m, max_slots);
    float s = 0.f;
    for (int j = tid; j < classes; j += nt) s += expf(xent_load(z + j) - m);
    s = xent_block_sum(s, sum_slots);
    for (int j = tid; j < classes; j += nt) p[j] = expf(xent_load(z + j) - m) / s;
}

extern "C" __global__ void softmax_fwd_f16(const __half* __restrict__ logits, float* __restrict__ probs, int classes) {
    softmax_row(logits, probs, classes);
}

extern "C" __global__ void softmax_fwd_f32(const float* __restrict__ logits, float* __restrict__ probs, int classes) {
    softmax_row(logits, probs, classes);
}

// One block (a multiple of 32 threads). Thread t owns rows t, t + nt, ...; partial sums in
// f64 combined in a fixed tree, so the mean does not depend on the launch or the schedule.
extern "C" __global__ void softmax_xent_finish(const float* __restrict__ row_loss, const int* __restrict__ row_rank,
                                               const int* __restrict__ labels, int* __restrict__ status, int batch,
                                               int classes) {
    __shared__ double dscratch[32];
    __shared__ int warp_ints[4][32];
    const int tid = threadIdx.x, nt = blockDim.x, nw = nt >> 5;
    double sum = 0.0;
    int top1 = 0, top5 = 0, bad = 0, first_bad = 0x7fffffff;
    for (int r = tid; r < batch; r += nt) {
        sum += (double)row_loss[r];
        int rank = row_rank[r];
        if (rank == XENT_RANK_BAD) {
            ++bad;
            first_bad = min(first_bad, r);
        } else {
            top1 += rank < 1;
            top5 += rank < 5;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
        top1 += __shfl_xor_sync(0xffffffffu, top1, o);
        top5 += __shfl_xor_sync(0xffffffffu, top5, o);
        bad += __shfl_xor_sync(0xffffffffu, bad, o);
        first_bad = min(first_bad, __shfl_xor_sync(0xffffffffu, first_bad, o));
    }
    // Warp totals, then thread 0 adds them in warp order.
    if ((tid & 31) == 0) {
        dscratch[tid >> 5] = sum;
        warp_ints[0][tid >> 5] = top1;
        warp_ints[1][tid >> 5] = top5;
        warp_ints[2][tid >> 5] = bad;
        warp_ints[3][tid >> 5] = first_bad;
    }
    __syncthreads();
    if (tid != 0) return;
    sum = 0.0;
    top1 = top5 = bad = 0;
    first_bad = 0x7fffffff;
    for (int w = 0; w < nw; ++w) {
        sum += dscratch[w];
        top1 += warp_ints[0][w];
        top5 += warp_ints[1][w];
        bad += warp_ints[2][w];
        first_bad = min(first_bad, warp_ints[3][w]);
    }
    status[XENT_LOSS] = __float_as_int((float)(sum / (double)batch));
    status[XENT_TOP1] = top1;
    status[XENT_TOP5] = top5;
    status[XENT_ROWS] = batch;
    if (bad > 0) {
        if (status[XENT_BAD] == 0) {
            status[XENT_BAD_ROW] = first_bad;
            status[XENT_BAD_LABEL] = labels[first_bad];
            status[XENT_BAD_CLASSES] = classes;
        }
        status[XENT_BAD] += bad;
    }
}
