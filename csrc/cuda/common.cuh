// Device building blocks shared by the kernels of csrc/cuda: element loads, the level table in shared memory,
// the three jobs of docs/architecture.md as per-element / per-warp functions, and block reductions.
// Numerics are those of tnq_kernels/reference.py: every fp32 expression of the reference is written with an
// explicit round-to-nearest intrinsic (__fdiv_rn, __fsub_rn, __fmul_rn, __fadd_rn) so nothing can be contracted
// into an FMA, and the build adds --fmad=false on top. No fast-math, no flush-to-zero. Codes equal the
// reference's at equal seed; a scale may differ in its last bit on crafted inputs (the fp64 sum runs in another
// order, docs/format.md), and a non-finite block's scale is some NaN or Inf (its bits are not fixed).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../tnq_constants.h"
#include "kernels.h"

namespace tnq {
namespace cuda {
namespace dev {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;  // threads per CTA of the block kernels (8 warps)

// ---- element types: storage type and elements per 16-byte vector ----

template <int DT>
struct Elem;
template <>
struct Elem<kFloat32> {
  using T = float;
  static constexpr int V = 4;
};
template <>
struct Elem<kFloat16> {
  using T = uint16_t;
  static constexpr int V = 8;
};
template <>
struct Elem<kBFloat16> {
  using T = uint16_t;
  static constexpr int V = 8;
};

template <int DT>
__device__ __forceinline__ float to_f32(typename Elem<DT>::T v) {
  if constexpr (DT == kFloat32) {
    return v;
  } else if constexpr (DT == kFloat16) {
    return __half2float(__ushort_as_half(v));  // exact
  } else {
    return __uint_as_float(uint32_t(v) << 16);  // bf16 is the top half of an fp32: exact
  }
}

// Elements [i, i + V) of x as fp32, elements at or past `end` read as 0 (and are not loaded). One 16-byte load
// when the whole vector is in range; x + i must then be 16-byte aligned (the launchers guarantee it: x is
// 16-byte aligned and i is a multiple of V).
template <int DT>
__device__ __forceinline__ void load_vec(const typename Elem<DT>::T* __restrict__ x, int64_t i, int64_t end,
                                         float (&f)[Elem<DT>::V]) {
  constexpr int V = Elem<DT>::V;
  if (i + V <= end) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(x + i));
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
    if constexpr (DT == kFloat32) {
#pragma unroll
      for (int k = 0; k < 4; ++k) f[k] = __uint_as_float(w[k]);
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) {  // little-endian: the low half is the lower element
        f[2 * k] = to_f32<DT>(uint16_t(w[k] & 0xffffu));
        f[2 * k + 1] = to_f32<DT>(uint16_t(w[k] >> 16));
      }
    }
  } else {
#pragma unroll
    for (int t = 0; t < V; ++t) f[t] = (i + t < end) ? to_f32<DT>(x[i + t]) : 0.0f;
  }
}

// ---- the level table in shared memory ----

struct SharedTable {
  // search[j] = c_j for 1 <= j <= s-1 and NaN at j = s: `NaN <= z` is false, so the binary search below never
  // moves past k = s-1, which makes k the number of *interior* levels <= z (the reference's searchsorted).
  float search[256];
  float c[256];
  float r[256];  // inverse gaps
};

// Whole CTA; ends with __syncthreads().
__device__ __forceinline__ void load_table(SharedTable& st, const LevelTable& tab, int bits) {
  const int L = 1 << bits;
  for (int j = threadIdx.x; j < L; j += blockDim.x) {
    st.c[j] = tab.c[j];
    st.r[j] = tab.inv_gap[j];
    st.search[j] = (j >= 1 && j < L - 1) ? tab.c[j] : __int_as_float(0x7fc00000);
  }
  __syncthreads();
}

// ---- job 1: truncate ----

// r = fp32(1/scale) as reference.inverse_scale: one correctly rounded division per block (the v1.1 encode (docs/format.md)), capped at
// FLT_MAX (1/scale overflows for subnormal scales, and inf would turn a zero element into 0·inf = NaN); 0 when the
// scale is 0 or non-finite, where truncate ignores r.
__device__ __forceinline__ float inverse_scale(float scale) {
  return (isfinite(scale) && scale > 0.0f) ? fminf(__fdiv_rn(1.0f, scale), 3.40282347e+38f) : 0.0f;
}

// z = clamp(g · r, c_0, c_s) with r = inverse_scale(scale), as the reference computes it: one round-to-nearest
// multiply, z = 0 when the scale is 0, and z = c_0 for a non-finite block (so its codes are 0).
__device__ __forceinline__ float truncate(float g, float r, float scale, float c0, float cs) {
  const bool finite = isfinite(scale);
  const bool usable = finite && scale > 0.0f;
  float z = usable ? __fmul_rn(g, r) : 0.0f;
  z = fminf(fmaxf(z, c0), cs);  // z is never NaN here: a finite block holds only finite g
  return finite ? z : c0;
}

// ---- job 2: codebook lookup + stochastic rounding ----

// code = k + [U < p] with k = #interior levels <= z (branchless binary search over the shared table),
// p = (z - c_k) * inv_gap_k in fp32, U = (m + 0.5) · 2^-16 from the element's 16 random bits m (SPEC v1.2), or
// U = kNearestU when `nearest` (rounding to the nearest level; m is ignored).
template <int BITS>
__device__ __forceinline__ uint32_t round_code(float z, uint32_t m, const SharedTable& st, int bits_rt,
                                               bool nearest) {
  const int nb = BITS ? BITS : bits_rt;
  int k = 0;
#pragma unroll
  for (int d = 0; d < (BITS ? BITS : kMaxBits); ++d) {
    if (BITS == 0 && d >= nb) break;
    const int step = 1 << (nb - 1 - d);
    k += (st.search[k + step] <= z) ? step : 0;
  }
  const float p = __fmul_rn(__fsub_rn(z, st.c[k]), st.r[k]);
  return uint32_t(k) + ((nearest ? kNearestU : uniform16(m)) < p ? 1u : 0u);
}

// ---- job 3: pack, one warp at a time ----

// Spreads the low L = 32/V bits of x to stride V (bit k -> bit V*k).
template <int V>
__device__ __forceinline__ uint32_t spread(uint32_t x) {
  if constexpr (V == 4) {  // 8 bits -> stride 4
    x = (x | (x << 12)) & 0x000F000Fu;
    x = (x | (x << 6)) & 0x03030303u;
    x = (x | (x << 3)) & 0x11111111u;
    return x;
  } else {  // V == 8: 4 bits -> stride 8; the four shifted copies do not overlap, so the product is their OR
    static_assert(V == 8, "16-byte vectors hold 4 or 8 elements");
    return (x * 0x00204081u) & 0x01010101u;
  }
}

// The warp holds a chunk of 32·V consecutive elements, lane l owning elements V·l … V·l + V-1 (its 16-byte
// vector) with codes code[0..V). The chunk is V groups of 32; its words are words[q·bits + p] for group q, plane
// p, so the V·bits words of a chunk are contiguous and lane l builds word(s) l, l+32, ... of them.
// One __ballot_sync per (plane p, vector slot t) gives, at bit l, bit p of the code of element V·l + t; group q's
// word takes bits L·q … L·q + L-1 of the V ballots of its plane, interleaved (element 32q + j is lane
// L·q + j/V, slot j%V).  Returns the number of words this lane holds in `out` (its word indices: lane + 32r).
template <int V, int BITS>
struct ChunkWords {
  static constexpr int kMaxWords = V * (BITS ? BITS : kMaxBits);
  static constexpr int R = (kMaxWords + 31) / 32;
  uint32_t w[R];
};

template <int V, int BITS>
__device__ __forceinline__ void pack_chunk(const uint32_t (&code)[V], int bits_rt, ChunkWords<V, BITS>& out) {
  constexpr int L = 32 / V;
  constexpr int R = ChunkWords<V, BITS>::R;
  const int nb = BITS ? BITS : bits_rt;
  const int lane = threadIdx.x & 31;
  int q[R], pw[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int w = lane + 32 * r;
    q[r] = w / nb;  // a constant divisor when BITS > 0
    pw[r] = w - q[r] * nb;
    out.w[r] = 0;
  }
#pragma unroll
  for (int p = 0; p < (BITS ? BITS : kMaxBits); ++p) {
    if (BITS == 0 && p >= nb) break;
#pragma unroll
    for (int t = 0; t < V; ++t) {
      const uint32_t b = __ballot_sync(kFullMask, (code[t] >> p) & 1u);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (pw[r] == p && q[r] < V) out.w[r] |= spread<V>((b >> (L * q[r])) & ((1u << L) - 1u)) << t;
      }
    }
  }
}

// ---- reductions ----

// max that propagates NaN (torch.amax does): once NaN, always NaN.
__device__ __forceinline__ float nanmax(float a, float b) { return (b > a || b != b) ? b : a; }
__device__ __forceinline__ double nanmax(double a, double b) { return (b > a || b != b) ? b : a; }

// CTA-wide reduction of one double (sum or NaN-propagating max) in a fixed order (warp butterfly, then warp 0
// over the warps in index order), so a launch configuration always gives the same bits. Result in all threads.
template <bool MAX>
__device__ __forceinline__ double block_reduce(double v, double* smem /* [32 + 1] */) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const double u = __shfl_xor_sync(kFullMask, v, o);
    v = MAX ? nanmax(v, u) : __dadd_rn(v, u);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = (blockDim.x + 31) >> 5;
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double a = smem[0];
    for (int w = 1; w < nwarps; ++w) a = MAX ? nanmax(a, smem[w]) : __dadd_rn(a, smem[w]);
    smem[32] = a;
  }
  __syncthreads();
  return smem[32];
}

// Two sums (Σ|g| and Σg²) reduced together: each in block_reduce<false>'s order, so the same bits, but one
// shared-memory round (two __syncthreads fewer) for the Σg²/(2Σ|g|) rule.
__device__ __forceinline__ void block_reduce_sum2(double& a, double& b, double* smem /* [2·32 + 2] */) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    a = __dadd_rn(a, __shfl_xor_sync(kFullMask, a, o));
    b = __dadd_rn(b, __shfl_xor_sync(kFullMask, b, o));
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = (blockDim.x + 31) >> 5;
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) {
    smem[warp] = a;
    smem[32 + warp] = b;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double u = smem[0], v = smem[32];
    for (int w = 1; w < nwarps; ++w) {
      u = __dadd_rn(u, smem[w]);
      v = __dadd_rn(v, smem[32 + w]);
    }
    smem[64] = u;
    smem[65] = v;
  }
  __syncthreads();
  a = smem[64];
  b = smem[65];
}

// A block's (or tile's) reduction for its scale rule (tnq_constants.h ScaleRule): s1 = Σ|g| (mean), max|g| (max,
// NaN-propagating) or Σg² (L2); s2 = Σg² for the Σg²/(2Σ|g|) rule, else 0. Squares of fp32 values are exact in fp64.
struct ScaleSums {
  double s1, s2;
};

// ScaleSums over [start, end) by the whole CTA. start must be a multiple of V. The rule is a template parameter so
// each element costs only the adds (or the compare) its rule needs: Σg² takes one fp64 fused multiply-add per
// element, which rounds once like mul + add because the square of an fp32 value is exact in fp64.
constexpr int kReduceSmem = 66;  // doubles of shared memory reduce_rule / block_reduce_sum2 need
template <int DT, int RULE>
__device__ __forceinline__ ScaleSums reduce_rule(const typename Elem<DT>::T* __restrict__ x, int64_t start,
                                                 int64_t end, double* smem) {
  constexpr int V = Elem<DT>::V;
  double sum = 0.0, sum2 = 0.0;
  float mx = 0.0f;
  const int64_t stride = int64_t(blockDim.x) * V;
#pragma unroll 2
  for (int64_t i = start + int64_t(threadIdx.x) * V; i < end; i += stride) {
    float f[V];
    load_vec<DT>(x, i, end, f);
#pragma unroll
    for (int t = 0; t < V; ++t) {
      const double a = double(fabsf(f[t]));
      if constexpr (RULE == kScaleMaxAbs) {
        mx = nanmax(mx, fabsf(f[t]));
      } else if constexpr (RULE == kScaleL2) {
        sum = __fma_rn(a, a, sum);
      } else {
        sum = __dadd_rn(sum, a);
        if constexpr (RULE == kScaleM2M1) sum2 = __fma_rn(a, a, sum2);
      }
    }
  }
  if constexpr (RULE == kScaleMaxAbs) return ScaleSums{block_reduce<true>(double(mx), smem), 0.0};
  if constexpr (RULE == kScaleM2M1) {
    block_reduce_sum2(sum, sum2, smem);
    return ScaleSums{sum, sum2};
  }
  return ScaleSums{block_reduce<false>(sum, smem), 0.0};
}

template <int DT>
__device__ __forceinline__ ScaleSums reduce_scale(const typename Elem<DT>::T* __restrict__ x, int64_t start,
                                                  int64_t end, int rule, double* smem) {
  switch (rule) {
    case kScaleMaxAbs: return reduce_rule<DT, kScaleMaxAbs>(x, start, end, smem);
    case kScaleL2: return reduce_rule<DT, kScaleL2>(x, start, end, smem);
    case kScaleM2M1: return reduce_rule<DT, kScaleM2M1>(x, start, end, smem);
    default: return reduce_rule<DT, kScaleMeanAbs>(x, start, end, smem);
  }
}

// The block's fp32 scale from its reduction, each rounded once as the reference: mean = fp64 sum / fp64 count;
// max is exact; ‖g‖₂ = sqrt (IEEE, __dsqrt_rn) of the fp64 Σg²; Σg² / (2·Σ|g|), 0 for an all-zero block.
__device__ __forceinline__ float finish_scale(ScaleSums r, int64_t count, int rule) {
  if (rule == kScaleMaxAbs) return float(r.s1);
  if (rule == kScaleL2) return __double2float_rn(__dsqrt_rn(r.s1));
  if (rule == kScaleM2M1) return r.s1 == 0.0 ? 0.0f : __double2float_rn(__ddiv_rn(r.s2, __dmul_rn(2.0, r.s1)));
  return __double2float_rn(__ddiv_rn(r.s1, double(count > 0 ? count : 1)));
}

// ---- the encode pass over one range of one block ----

// Jobs 1-3 for elements [start, end) of one block with scale `scale`, by all warps of the CTA: z, codes, words.
// start is a multiple of 32 (block and tile starts are), so every chunk of 32·V elements starts on a group and
// every 16-byte load is aligned; end = min(block or tile end, n). Groups of a chunk past the range's last group
// belong to the next block or tile (which writes them) and are left alone; tail codes (past n) are 0.
template <int DT, int BITS>
__device__ __forceinline__ void encode_range(const typename Elem<DT>::T* __restrict__ x, int64_t start,
                                             int64_t end, float scale, SeedKeys keys, bool nearest,
                                             const SharedTable& st, int bits_rt, uint32_t* __restrict__ words) {
  constexpr int V = Elem<DT>::V;
  constexpr int CH = 32 * V;
  using CW = ChunkWords<V, BITS>;
  const int nb = BITS ? BITS : bits_rt;
  const float c0 = st.c[0], cs = st.c[(1 << nb) - 1];
  const float r = inverse_scale(scale);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int64_t group_end = (end + 31) >> 5;
  // the pair key of the range's first element; recomputed only for a chunk past a change of j_hi (2^33 elements)
  const uint32_t hi_start = uint32_t(uint64_t(start) >> 33), key_start = pair_key(keys, hi_start);
  for (int64_t base = start + int64_t(warp) * CH; base < end; base += int64_t(nwarps) * CH) {
    const int64_t i = base + int64_t(lane) * V;
    float f[V];
    load_vec<DT>(x, i, end, f);
    uint32_t code[V];
    // i is even and the lane's V elements share j_hi: one hash per pair, element i + t takes half t & 1
    const uint32_t hi = uint32_t(uint64_t(i) >> 33);
    const uint32_t key = hi == hi_start ? key_start : pair_key(keys, hi);
#pragma unroll
    for (int t = 0; t < V; t += 2) {
      const uint32_t h = pair_hash(key, uint32_t(uint64_t(i + t) >> 1));
      const float z0 = truncate(f[t], r, scale, c0, cs), z1 = truncate(f[t + 1], r, scale, c0, cs);
      code[t] = (i + t < end) ? round_code<BITS>(z0, h & 0xFFFFu, st, nb, nearest) : 0u;
      code[t + 1] = (i + t + 1 < end) ? round_code<BITS>(z1, h >> 16, st, nb, nearest) : 0u;
    }
    CW cw;
    pack_chunk<V, BITS>(code, nb, cw);
    const int64_t g0 = base >> 5;
#pragma unroll
    for (int r = 0; r < CW::R; ++r) {
      const int w = lane + 32 * r;
      if (w < V * nb && g0 + w / nb < group_end) words[g0 * nb + w] = cw.w[r];
    }
  }
}

// Job 1 output of scale_truncate: z for [start, end), vectorised the same way (z is fp32, 16-byte aligned).
template <int DT>
__device__ __forceinline__ void truncate_range(const typename Elem<DT>::T* __restrict__ x, int64_t start,
                                               int64_t end, float scale, float c0, float cs, float* __restrict__ z) {
  constexpr int V = Elem<DT>::V;
  const int64_t stride = int64_t(blockDim.x) * V;
  const float r = inverse_scale(scale);
  for (int64_t i = start + int64_t(threadIdx.x) * V; i < end; i += stride) {
    float f[V];
    load_vec<DT>(x, i, end, f);
#pragma unroll
    for (int t = 0; t < V; ++t)
      if (i + t < end) z[i + t] = truncate(f[t], r, scale, c0, cs);
  }
}

}  // namespace dev
}  // namespace cuda
}  // namespace tnq

namespace tnq {
namespace cuda {

// Host side of every launcher: the error of the launches just enqueued (nullptr when there is none).
inline const char* launch_status() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// Grid of a grid-stride kernel: enough CTAs for `work` items of `per_cta` each, capped (the loops stride).
inline unsigned grid_for(int64_t work, int64_t per_cta) {
  const int64_t g = (work + per_cta - 1) / per_cta;
  return unsigned(g < 1 ? 1 : (g > (int64_t(1) << 20) ? (int64_t(1) << 20) : g));
}

constexpr const char* kGridTooLarge = "tnq CUDA: more scale blocks than a grid can hold (2^31 - 1)";

// Calls fn(integral_constant<int, DT>, integral_constant<int, BITS>) with the element type of dtype_id and the
// bit width specialised for the fast paths 2-5 (BITS = 0: any width, read at run time).
template <int DT, typename Fn>
const char* dispatch_bits(int bits, Fn&& fn) {
  switch (bits) {
    case 2: return fn(std::integral_constant<int, DT>{}, std::integral_constant<int, 2>{});
    case 3: return fn(std::integral_constant<int, DT>{}, std::integral_constant<int, 3>{});
    case 4: return fn(std::integral_constant<int, DT>{}, std::integral_constant<int, 4>{});
    case 5: return fn(std::integral_constant<int, DT>{}, std::integral_constant<int, 5>{});
    default: return fn(std::integral_constant<int, DT>{}, std::integral_constant<int, 0>{});
  }
}

template <typename Fn>
const char* dispatch_dtype_bits(int dtype_id, int bits, Fn&& fn) {
  switch (dtype_id) {
    case kFloat32: return dispatch_bits<kFloat32>(bits, fn);
    case kFloat16: return dispatch_bits<kFloat16>(bits, fn);
    case kBFloat16: return dispatch_bits<kBFloat16>(bits, fn);
    default: return "tnq CUDA: unsupported dtype id";
  }
}

// The same with the dtype only (BITS = 0).
template <typename Fn>
const char* dispatch_dtype(int dtype_id, Fn&& fn) {
  switch (dtype_id) {
    case kFloat32: return fn(std::integral_constant<int, kFloat32>{}, std::integral_constant<int, 0>{});
    case kFloat16: return fn(std::integral_constant<int, kFloat16>{}, std::integral_constant<int, 0>{});
    case kBFloat16: return fn(std::integral_constant<int, kBFloat16>{}, std::integral_constant<int, 0>{});
    default: return "tnq CUDA: unsupported dtype id";
  }
}

}  // namespace cuda
}  // namespace tnq
