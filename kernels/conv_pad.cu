// conv_pad.cu: zero-padding of the channel dimension, so that a 3x3 convolution whose C is not
// a multiple of 8 (VGG's first layer, C = 3) can run on the tensor-core paths, which copy whole
// 16-byte (8-channel) pieces of every NHWC row and KRSC filter row.
//   pad_channels_f16   dst[row][j] = j < c ? src[row][j] : 0, rows of c halves -> rows of cp
//                      halves (cp a multiple of 8, cp >= c)
// src/ops/conv/launch.rs pads x [N,H,W,C] -> [N,H,W,Cp] and w [K,3,3,C] -> [K,3,3,Cp] into the
// workspace. The zero channels add exact zeros to every sum, so the padded convolution equals
// the unpadded one (bit for bit on integer data).
// One thread per 8-channel piece of a destination row, one 16-byte store: consecutive threads
// write consecutive 16-byte pieces (coalesced) and read consecutive, packed source rows (for
// C = 3, 6 bytes each), so both sides move whole cache lines. The kernel is memory bound:
// N*H*W*(C + Cp)*2 bytes, about 70 MB (~20 us on an H200) for conv1_1 at batch 64.
#include "common.cuh"

extern "C" __global__ void pad_channels_f16(const __half* __restrict__ src, __half* __restrict__ dst,
                                            long long rows, int c, int cp) {
    const int pieces = cp >> 3;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * pieces) return;
    // cp == 8 (the first layer) is one piece a row: no division on that path.
    const long long row = pieces == 1 ? i : i / pieces;
    const int c0 = pieces == 1 ? 0 : (int)(i - row * pieces) * 8;
    const __half* s = src + row * c;
    __align__(16) __half v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = c0 + j < c ? s[c0 + j] : __float2half(0.f);
    *reinterpret_cast<uint4*>(dst + i * 8) = *reinterpret_cast<const uint4*>(v);
}
