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

#include "../bin_index.h"
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

// Elements [i, i + V) of x as fp32, elements at or past `end` read as `fill` (and are not loaded). One 16-byte load
// when the whole vector is in range; x + i must then be 16-byte aligned (the launchers guarantee it: x is
// 16-byte aligned and i is a multiple of V).
template <int DT>
__device__ __forceinline__ void load_vec(const typename Elem<DT>::T* __restrict__ x, int64_t i, int64_t end,
                                         float (&f)[Elem<DT>::V], float fill = 0.0f) {
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
    for (int t = 0; t < V; ++t) f[t] = (i + t < end) ? to_f32<DT>(x[i + t]) : fill;
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

// ---- job 2 with the O(1) cell index (LevelTable::bins > 0) ----

// The rounding arithmetic of the reference, on host and device (the host test runs these functions).
TNQ_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
TNQ_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// The table of the O(1) index in shared memory (2.5 KiB), in 16-byte entries so that each lookup is one load and
// each choice between two candidates one select: a bin holds the byte offsets of its two candidate cells in
// `level` and the level between them; a level entry holds c_k, ρ_k·2^16 and the two codes k, k + 1.
struct alignas(16) BinEntry16 {
  uint32_t off_lo;  // 16 · lo
  float t1;         // c_{lo+1}, or NaN when lo + 1 is not an interior level
  uint32_t off_hi;  // 16 · (lo + 1)
  uint32_t pad;
};
struct alignas(16) LevelEntry {
  float c, inv_gap16;
  uint32_t k, k1;
};
struct FastTable {
  BinEntry16 bin[kCudaMaxBins + 1];
  LevelEntry level[32];
};
TNQ_HD BinEntry16 bin_entry16(const BinEntry& e) { return BinEntry16{16 * e.lo, e.t1, 16 * (e.lo + 1), 0u}; }
TNQ_HD LevelEntry level_entry(const Level16& l, uint32_t k) { return LevelEntry{l.c, l.inv_gap16, k, k + 1}; }

// Whole CTA; ends with __syncthreads().
__device__ __forceinline__ void load_fast_table(FastTable& ft, const LevelTable& tab) {
  for (int j = threadIdx.x; j <= tab.bins; j += blockDim.x) ft.bin[j] = bin_entry16(tab.bin[j]);
  for (int k = threadIdx.x; k < 32; k += blockDim.x) ft.level[k] = level_entry(tab.level16[k], uint32_t(k));
  __syncthreads();
}

// code = k + [U < p] as the reference for z = g·r *not clamped* (z = NaN: code 0), m the element's 16 random bits.
// Same code as clamping first: the bin table puts z < c_0 in cell 0 and z > c_s in cell s-1 (csrc/bin_index.h),
// where p = (z - c_k)·ρ_k is then < 0 (never rounds up, as p = 0 at z = c_0) or >= its value at z = c_s, which is
// 1 within a few ulps and always above U <= 1 - 2^-17 (always rounds up, as at z = c_s).
// U < p is tested as U·2^16 < (z - c_k)·(ρ_k·2^16): ρ_k·2^16 is exact and finite (make_gpu_bins checks it), so
// the product is p·2^16 exactly unless p < 2^-126, where both sides say no (U >= 2^-17). `nearest`: U = kNearestU
// (m is ignored), the same comparison scaled by the same exact 2^16.
TNQ_HD uint32_t fast_code(float z, uint32_t m, const FastTable& ft, float mul, float add, float bias,
                          bool nearest) {
  const BinEntry16 e = ft.bin[gpu_bin(z, mul, add, bias)];
  const uint32_t off = z >= e.t1 ? e.off_hi : e.off_lo;  // t1 = NaN: never
  const LevelEntry l = *reinterpret_cast<const LevelEntry*>(reinterpret_cast<const char*>(ft.level) + off);
  const float p16 = mul_rn(sub_rn(z, l.c), l.inv_gap16);
  return (nearest ? kNearestU * 65536.0f : uniform16_x65536(m)) < p16 ? l.k1 : l.k;
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

// r for the encode: inverse_scale for a finite scale (0 for a zero scale: z = ±0, all finite g), NaN for a non-finite
// one, so every z of the block is NaN and gets code 0 (the reference clamps such a block to c_0: code 0).
__device__ __forceinline__ float encode_inverse(float scale) {
  return isfinite(scale) ? inverse_scale(scale) : __int_as_float(0x7fc00000);
}

// A warp encodes chunks of kChunk = 1024 elements (32 groups): every lane loads 16-byte vectors of the chunk
// (coalesced), writes each code as one byte into the warp's 1 KiB staging area, transposed, and then packs one
// group (lane l: group l of the chunk) from two 16-byte shared loads. Staging layout: the 8 words D_0..D_7 of a
// group gl, D_i byte q = code of element 8q + i of the group, so bit plane p of the group is
// W_p = OR_i ((D_i >> p) & 0x01010101) << i. Group gl's word i sits at 8·gl + (i ^ 4·((gl >> 2) & 1)): the
// swizzle keeps both the byte stores and the 16-byte loads free of bank conflicts.
constexpr int kChunk = 1024;
constexpr int kStageBytes = kChunk;  // per warp

template <int V>
TNQ_HD int stage_byte(int lane, int m, int t) {
  constexpr int L = 32 / V;           // lanes per group
  const int gl = m * V + lane / L;    // element m·32V + lane·V + t of the chunk is in group gl ...
  const int j = (lane % L) * V + t;   // ... at position j
  return 4 * (8 * gl + ((j & 7) ^ (((gl >> 2) & 1) << 2))) + (j >> 3);
}
// The same as a per-lane part and a constant: stage_byte(lane, m, t) = stage_lane<V>(lane, m & 1, t >> 2)
// + 32·V·m + 4·t (m and t are unrolled constants in encode_range, so each store is [register + immediate]).
template <int V>
TNQ_HD int stage_lane(int lane, int m_odd, int t_high) {
  return stage_byte<V>(lane, m_odd, 4 * t_high) - 32 * V * m_odd - 16 * t_high;
}

// Where lane l finds D_0..D_3 (half 0) and D_4..D_7 (half 1) of its group: 16-byte unit index in the staging area.
TNQ_HD int stage_half(int lane, int half) { return 2 * lane + (half ^ ((lane >> 2) & 1)); }

// Bit plane p of a group from its staging words.
TNQ_HD uint32_t stage_plane(const uint32_t (&d)[8], int p) {
  uint32_t w = 0;
#pragma unroll
  for (int q = 0; q < 8; ++q) w |= ((d[q] >> p) & 0x01010101u) << q;
  return w;
}

// The pair keys of a range of elements (a block or a tile, at most 2^30 elements): it crosses at most one change of
// j_hi (every 2^33 elements), and a 16-byte vector none; range_key gives the key of element i of the range.
struct RangeKeys {
  uint32_t hi_start, key_start, key_next;
};
TNQ_HD RangeKeys range_keys(SeedKeys keys, int64_t start) {
  const uint32_t hi = uint32_t(uint64_t(start) >> 33);
  return RangeKeys{hi, pair_key(keys, hi), pair_key(keys, hi + 1)};
}
TNQ_HD uint32_t range_key(const RangeKeys& rk, int64_t i) {
  return uint32_t(uint64_t(i) >> 33) == rk.hi_start ? rk.key_start : rk.key_next;
}

// Jobs 1-3 for elements [start, end) of one block with scale `scale`, by all warps of the CTA: z, codes, words.
// start is a multiple of 32 (block and tile starts are), so every 16-byte load is aligned; end = min(block or tile
// end, n). Groups of a chunk past the range's last group belong to the next block or tile (which writes them) and
// are left alone; elements past `end` read as NaN, whose code is 0 (tail codes past n are 0).
// BITS > 0: the O(1) index (FastTable); BITS = 0: any width and any table, binary search (SharedTable).
template <int DT, int BITS, typename Table>
__device__ __forceinline__ void encode_range(const typename Elem<DT>::T* __restrict__ x, int64_t start,
                                             int64_t end, float scale, SeedKeys keys, bool nearest, const Table& st,
                                             const LevelTable& tab, int bits_rt, uint32_t* __restrict__ words,
                                             uint8_t* stage /* this warp's kStageBytes, 16-byte aligned */) {
  constexpr int V = Elem<DT>::V;
  constexpr int M = kChunk / (32 * V);  // 16-byte vectors per lane and chunk
  const int nb = BITS ? BITS : bits_rt;
  const float r = encode_inverse(scale);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int64_t group_end = (end + 31) >> 5;
  float mul = 0.0f, add = 0.0f, bias = 0.0f;
  if constexpr (BITS != 0) {
    mul = tab.bin_mul;
    add = tab.bin_add;
    bias = tab.bin_bias;
  }
  const RangeKeys rk = range_keys(keys, start);
  int lane_byte[2][V / 4];  // stage_lane of this lane
#pragma unroll
  for (int mo = 0; mo < 2; ++mo)
#pragma unroll
    for (int th = 0; th < V / 4; ++th) lane_byte[mo][th] = stage_lane<V>(lane, mo, th);
  for (int64_t base = start + int64_t(warp) * kChunk; base < end; base += int64_t(nwarps) * kChunk) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const int64_t i = base + int64_t(m * 32 * V + lane * V);
      float f[V];
      load_vec<DT>(x, i, end, f, __int_as_float(0x7fc00000));
      const uint32_t key = range_key(rk, i);
      const uint32_t j0 = uint32_t(uint64_t(i) >> 1);  // a multiple of V/2: j0 + t/2 = j0 | t/2
#pragma unroll
      for (int t = 0; t < V; t += 2) {  // one hash per pair, element i + t takes half t & 1
        const uint32_t h = pair_hash(key, j0 | uint32_t(t >> 1));
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const float z = __fmul_rn(f[t + u], r);
          const uint32_t mm = u ? h >> 16 : h & 0xFFFFu;
          uint32_t code;
          if constexpr (BITS != 0) code = fast_code(z, mm, st, mul, add, bias, nearest);
          else code = round_code<0>(z, mm, st, nb, nearest);
          stage[lane_byte[m & 1][(t + u) >> 2] + 32 * V * m + 4 * (t + u)] = uint8_t(code);
        }
      }
    }
    __syncwarp();
    const int64_t g = (base >> 5) + lane;
    if (g < group_end) {
      const uint4* s4 = reinterpret_cast<const uint4*>(stage);
      const uint4 a = s4[stage_half(lane, 0)], b = s4[stage_half(lane, 1)];
      const uint32_t d[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
      uint32_t* out = words + g * nb;
#pragma unroll
      for (int p = 0; p < (BITS ? BITS : kMaxBits); ++p) {
        if (BITS == 0 && p >= nb) break;
        out[p] = stage_plane(d, p);
      }
    }
    __syncwarp();  // the staging area is rewritten by the next chunk
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

// Calls fn(integral_constant<int, RULE>) with the scale rule (tnq_constants.h ScaleRule) as a constant.
template <typename Fn>
const char* dispatch_rule(int rule, Fn&& fn) {
  switch (rule) {
    case kScaleMaxAbs: return fn(std::integral_constant<int, kScaleMaxAbs>{});
    case kScaleL2: return fn(std::integral_constant<int, kScaleL2>{});
    case kScaleM2M1: return fn(std::integral_constant<int, kScaleM2M1>{});
    default: return fn(std::integral_constant<int, kScaleMeanAbs>{});
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
