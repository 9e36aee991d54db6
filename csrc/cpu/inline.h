// Inline building blocks shared by the CPU kernels: dtype loads/stores, per-block scale, the branchless codebook
// search + stochastic rounding of one 32-element group, and the bit-plane pack/unpack of a group.
#pragma once
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// The binary stays portable (no -march=native): the hot loops have hand-written AVX2 versions (TNQ_AVX2
// functions, chosen at run time by cpu_has_avx2()), and the portable loops they fall back to are compiled twice,
// for AVX2 and the baseline ISA, picked at load time (GCC ifunc). Both give the same bits: same operations, same
// order, no FMA (-ffp-contract=off). Build with TNQ_NO_AVX2=1 for baseline code only.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(TNQ_NO_AVX2)
#define TNQ_HAVE_AVX2_PATH 1
#define TNQ_AVX2 __attribute__((target("avx2,f16c")))
#include <immintrin.h>
#else
#define TNQ_HAVE_AVX2_PATH 0
#endif
// AVX-512 (F, BW, VL, DQ) kernels of the hot loops, chosen at run time like the AVX2 ones: 16 lanes, mask registers
// for the bit planes, two-register permutes for 32-entry tables. Same operations, same order, same bits.
#if TNQ_HAVE_AVX2_PATH && !defined(TNQ_NO_AVX512)
#define TNQ_HAVE_AVX512_PATH 1
#define TNQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")))
#else
#define TNQ_HAVE_AVX512_PATH 0
#endif
#if TNQ_HAVE_AVX2_PATH && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define TNQ_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define TNQ_CLONES
#endif

namespace tnq {
namespace cpu {

constexpr int64_t kGroup = 32;

// ---- dtype access ----
template <int DT>
struct Src;
template <>
struct Src<kFloat32> {
  using T = float;
  static inline float load(T v) { return v; }
  static inline T store(float v) { return v; }
};
template <>
struct Src<kFloat16> {
  using T = c10::Half;
  static inline float load(T v) { return static_cast<float>(v); }
  static inline T store(float v) { return c10::Half(v); }  // round to nearest even, as torch's .to(float16)
};
template <>
struct Src<kBFloat16> {
  using T = c10::BFloat16;
  static inline float load(T v) {
    const uint32_t u = uint32_t(v.x) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static inline T store(float v) { return c10::BFloat16(v); }  // round to nearest even, NaN stays NaN
};

// Calls f.template operator()<DT>() with the dtype id as a compile-time constant.
#define TNQ_DISPATCH_DTYPE(dtype_id, ...)                   \
  switch (dtype_id) {                                       \
    case kFloat32: { constexpr int DT = kFloat32; __VA_ARGS__; break; } \
    case kFloat16: { constexpr int DT = kFloat16; __VA_ARGS__; break; } \
    default: { constexpr int DT = kBFloat16; __VA_ARGS__; break; }      \
  }

#if TNQ_HAVE_AVX2_PATH
// True where the CPU has AVX2 + F16C + FMA, unless TNQ_NO_AVX2 is set in the environment (tests use it to run the
// portable loops on AVX2 machines). One answer per process.
inline bool cpu_has_avx2() {
  static const bool ok = [] {
    if (std::getenv("TNQ_NO_AVX2") != nullptr) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
  }();
  return ok;
}

template <int DT>
TNQ_AVX2 inline __m256 load8(const typename Src<DT>::T* x) {
  if constexpr (DT == kFloat32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(x));
  } else if constexpr (DT == kFloat16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));  // exact
  } else {
    const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));  // bf16 is the top half of an fp32
  }
}

// table[idx] for idx < N: in-register permutes for small tables, a gather otherwise.
template <int N>
TNQ_AVX2 inline __m256 lookup(const float* table, __m256i idx) {
  if constexpr (N == 1) {
    return _mm256_set1_ps(table[0]);
  } else if constexpr (N <= 4) {
    // an in-lane permute of the 4 entries repeated in both 128-bit lanes: on AMD Zen 3 it issues twice as often as
    // the lane-crossing one and has a third of its latency (docs/benchmarks-cpu.md)
    return _mm256_permutevar_ps(_mm256_broadcast_ps(reinterpret_cast<const __m128*>(table)), idx);
  } else if constexpr (N <= 8) {
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), idx);
  } else if constexpr (N <= 16) {
    const __m256 a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), idx);
    const __m256 b = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 of idx
  } else if constexpr (N <= 32) {
    // four 8-entry permutes and a blend tree on bits 3 and 4 of idx: cheaper than a gather on current cores
    const __m256 sel3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
    const __m256 sel4 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27));
    const __m256 a = _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(table), idx),
                                      _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), idx), sel3);
    const __m256 b = _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 16), idx),
                                      _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 24), idx), sel3);
    return _mm256_blendv_ps(a, b, sel4);
  } else {
    return _mm256_i32gather_ps(table, idx, 4);
  }
}

// Brings the cache lines of one 32-element group (128 bytes fp32, 64 bytes fp16/bf16) into L1; never faults.
template <int DT>
inline void prefetch_group(const typename Src<DT>::T* x) {
  const char* p = reinterpret_cast<const char*>(x);
  _mm_prefetch(p, _MM_HINT_T0);
  if constexpr (sizeof(typename Src<DT>::T) * kGroup > 64) _mm_prefetch(p + 64, _MM_HINT_T0);
}

TNQ_AVX2 inline __m256i fmix32_x8(__m256i x) {
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(int(kFmixC1)));
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 13));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(int(kFmixC2)));
  return _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
}

// Σ|x| (and Σx² with SQUARES) of kSumLanes = 32 fp64 lanes, lane j taking the elements i ≡ j (mod 32) of the
// first cnt32 — exactly the portable loop's order. Lanes 0..15 in one pass, 16..31 in a second, each reading 16
// elements of every 32: Σ|x| and Σx² then fit 8 of the 16 ymm registers. The square of an fp32 value is exact in
// fp64 (48 significant bits), so the fused multiply-add rounds once, like the portable loop's mul + add
// (cpu_has_avx2 requires FMA).
template <int DT, bool SQUARES>
__attribute__((target("avx2,f16c,fma"))) inline void abs_sum_lanes_avx2(const typename Src<DT>::T* x, int64_t cnt32,
                                                                         double* acc, double* acc2) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256d absmask_pd = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL));
  for (int half = 0; half < 2; ++half) {
    __m256d a[4], q[4];
    for (int j = 0; j < 4; ++j) a[j] = q[j] = _mm256_setzero_pd();
    for (int64_t i = 16 * half; i < cnt32; i += 32) {
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        __m256d lo, hi;
        if constexpr (DT == kBFloat16) {  // in-lane unpacks, not load8's lane-crossing widen (3-7% faster on Zen 3)
          const __m128i raw = _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i + 8 * h)),
                                            _mm_set1_epi16(0x7fff));  // |x|: one and for 8 values
          lo = _mm256_cvtps_pd(_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), raw)));
          hi = _mm256_cvtps_pd(_mm_castsi128_ps(_mm_unpackhi_epi16(_mm_setzero_si128(), raw)));
        } else if constexpr (DT == kFloat32) {  // widened from memory: no extract of the upper half
          const float* f = reinterpret_cast<const float*>(x + i + 8 * h);
          lo = _mm256_and_pd(_mm256_cvtps_pd(_mm_loadu_ps(f)), absmask_pd);
          hi = _mm256_and_pd(_mm256_cvtps_pd(_mm_loadu_ps(f + 4)), absmask_pd);
        } else {
          const __m256 v = _mm256_and_ps(load8<DT>(x + i + 8 * h), absmask);
          lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
          hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        }
        a[2 * h] = _mm256_add_pd(a[2 * h], lo);
        a[2 * h + 1] = _mm256_add_pd(a[2 * h + 1], hi);
        if constexpr (SQUARES) {
          q[2 * h] = _mm256_fmadd_pd(lo, lo, q[2 * h]);
          q[2 * h + 1] = _mm256_fmadd_pd(hi, hi, q[2 * h + 1]);
        }
      }
    }
    for (int j = 0; j < 4; ++j) {
      _mm256_storeu_pd(acc + 16 * half + 4 * j, a[j]);
      if constexpr (SQUARES) _mm256_storeu_pd(acc2 + 16 * half + 4 * j, q[j]);
    }
  }
}

// max|x| of 8 lanes (lane j: i ≡ j mod 8) and whether a NaN was seen.
template <int DT>
TNQ_AVX2 inline bool abs_max_lanes_avx2(const typename Src<DT>::T* x, int64_t cnt8, float* m) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 vm = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
  for (int64_t i = 0; i < cnt8; i += 8) {
    const __m256 a = _mm256_and_ps(load8<DT>(x + i), absmask);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    vm = _mm256_max_ps(a, vm);  // a > m ? a : m, as the portable loop
  }
  _mm256_storeu_ps(m, vm);
  return _mm256_movemask_ps(nan) != 0;
}
#endif  // TNQ_HAVE_AVX2_PATH

#if TNQ_HAVE_AVX512_PATH
// True where the CPU has AVX-512 F/BW/VL/DQ and the AVX2 path is allowed, unless TNQ_NO_AVX512 is set (tests use it
// to run the AVX2 loops on AVX-512 machines). One answer per process.
inline bool cpu_has_avx512() {
  static const bool ok = [] {
    if (!cpu_has_avx2() || std::getenv("TNQ_NO_AVX512") != nullptr) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }();
  return ok;
}

template <int DT>
TNQ_AVX512 inline __m512 load16(const typename Src<DT>::T* x) {
  if constexpr (DT == kFloat32) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(x));
  } else if constexpr (DT == kFloat16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));  // exact
  } else {
    const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));  // bf16 is the top half of an fp32
  }
}

// Stores 16 fp32 values as DT with the rounding of Src<DT>::store (nearest even; bf16 NaN stays a quiet NaN).
template <int DT>
TNQ_AVX512 inline void store16(__m512 v, typename Src<DT>::T* out) {
  if constexpr (DT == kFloat32) {
    _mm512_storeu_ps(reinterpret_cast<float*>(out), v);
  } else if constexpr (DT == kFloat16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  } else {
    // c10::BFloat16: u + 0x7fff + (bit 16 of u), top half; NaN becomes 0x7fc0 (no hardware convert: it flushes
    // subnormals)
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi32_epi16(r));
  }
}

// table[idx] for idx < N <= 64 (table padded to a multiple of 16 entries at least N long)
template <int N, typename V, typename T>
TNQ_AVX512 inline V lookup16(const T* table, __m512i idx) {
  static_assert(N <= 64, "lookup16 takes tables of up to 64 entries");
  __m512i r;
  const __m512i* t = reinterpret_cast<const __m512i*>(table);
  if constexpr (N <= 16) {
    r = _mm512_permutexvar_epi32(idx, _mm512_loadu_si512(t));
  } else if constexpr (N <= 32) {
    r = _mm512_permutex2var_epi32(_mm512_loadu_si512(t), idx, _mm512_loadu_si512(t + 1));
  } else {
    const __m512i a = _mm512_permutex2var_epi32(_mm512_loadu_si512(t), idx, _mm512_loadu_si512(t + 1));
    const __m512i b = _mm512_permutex2var_epi32(_mm512_loadu_si512(t + 2), idx, _mm512_loadu_si512(t + 3));
    r = _mm512_mask_mov_epi32(a, _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32)), b);
  }
  if constexpr (std::is_same_v<V, __m512>) return _mm512_castsi512_ps(r); else return r;
}

TNQ_AVX512 inline __m512i fmix32_x16(__m512i x) {
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(int(kFmixC1)));
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 13));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(int(kFmixC2)));
  return _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
}

// The 32 values of x[0..31] as fp32, elements 0..15 in v[0] and 16..31 in v[1]. bf16: one 64-byte load and two
// word permutes that put word i in the top half of dword i (zeroing the bottom), instead of two widening loads
// and shifts.
template <int DT>
TNQ_AVX512 inline void load32(const typename Src<DT>::T* x, __m512* v) {
  if constexpr (DT == kBFloat16) {
    const __m512i lo = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0, 7, 0, 6, 0, 5, 0, 4, 0,
                                        3, 0, 2, 0, 1, 0, 0, 0);
    const __m512i raw = _mm512_loadu_si512(x);
    v[0] = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, lo, raw));
    v[1] = _mm512_castsi512_ps(
        _mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, _mm512_add_epi16(lo, _mm512_set1_epi16(16)), raw));
  } else {
    v[0] = load16<DT>(x);
    v[1] = load16<DT>(x + 16);
  }
}

// One step of abs_sum_lanes_avx512: 16 values into two 8-lane accumulators of Σ|x| (and Σx²).
template <bool SQUARES>
TNQ_AVX512 inline void abs_sum_step_avx512(__m512 v, __m512d& a0, __m512d& a1, __m512d& q0, __m512d& q1) {
  v = _mm512_abs_ps(v);
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
  a0 = _mm512_add_pd(a0, lo);
  a1 = _mm512_add_pd(a1, hi);
  if constexpr (SQUARES) {
    q0 = _mm512_fmadd_pd(lo, lo, q0);
    q1 = _mm512_fmadd_pd(hi, hi, q1);
  }
}

// The same 32 lanes as abs_sum_lanes_avx2 in four 8-lane fp64 registers per sum, 32 values per iteration: each
// accumulator takes one add per iteration, so the loop is not held up by a chain of dependent adds (it was, with
// 16 lanes: docs/benchmarks-cpu.md). x² by a fused multiply-add, which rounds once like mul + add because the square
// is exact in fp64.
template <int DT, bool SQUARES>
TNQ_AVX512 inline void abs_sum_lanes_avx512(const typename Src<DT>::T* x, int64_t cnt32, double* acc,
                                            double* acc2) {
  __m512d a[4], q[4];
  for (int j = 0; j < 4; ++j) a[j] = q[j] = _mm512_setzero_pd();
  for (int64_t i = 0; i < cnt32; i += 32) {
    __m512 v[2];
    load32<DT>(x + i, v);
    abs_sum_step_avx512<SQUARES>(v[0], a[0], a[1], q[0], q[1]);
    abs_sum_step_avx512<SQUARES>(v[1], a[2], a[3], q[2], q[3]);
  }
  for (int j = 0; j < 4; ++j) {
    _mm512_storeu_pd(acc + 8 * j, a[j]);
    if constexpr (SQUARES) _mm512_storeu_pd(acc2 + 8 * j, q[j]);
  }
}
#endif  // TNQ_HAVE_AVX512_PATH

#define TNQ_DISPATCH_BITS(bits, ...)                        \
  switch (bits) {                                           \
    case 1: { constexpr int BITS = 1; __VA_ARGS__; break; } \
    case 2: { constexpr int BITS = 2; __VA_ARGS__; break; } \
    case 3: { constexpr int BITS = 3; __VA_ARGS__; break; } \
    case 4: { constexpr int BITS = 4; __VA_ARGS__; break; } \
    case 5: { constexpr int BITS = 5; __VA_ARGS__; break; } \
    case 6: { constexpr int BITS = 6; __VA_ARGS__; break; } \
    case 7: { constexpr int BITS = 7; __VA_ARGS__; break; } \
    default: { constexpr int BITS = 8; __VA_ARGS__; break; } \
  }

// ---- job 1: per-block scale ----
// Σ|g| for mean|g|, and Σ|g| with Σg² (SQUARES) for ‖g‖₂ and Σg²/(2Σ|g|): one read, one loop for every sum rule,
// in fp64 over 32 independent lanes (lane j: the elements i ≡ j (mod 32) of the first cnt/32·32, the rest into
// lane 0), combined by one fixed pairwise tree, so the AVX-512, AVX2 and portable loops give the same bits. The
// fp64 results are rounded once to fp32 (finish_scale), which hides the summation order. NaN/Inf propagate.
constexpr int kSumLanes = 32;

// ((a0 + a1) + (a2 + a3)) + ... : the balanced pairwise tree over the kSumLanes lanes
inline double sum_lanes(const double* a) {
  double t[kSumLanes];
  std::copy(a, a + kSumLanes, t);
  for (int w = kSumLanes / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) t[j] = t[2 * j] + t[2 * j + 1];
  return t[0];
}

template <int DT, bool SQUARES>
inline void abs_sums_f64(const typename Src<DT>::T* x, int64_t cnt, double* s1, double* s2) {
  double acc[kSumLanes], acc2[kSumLanes];  // the vector loops write every lane (acc2: with SQUARES)
  int64_t i = 0;
#if TNQ_HAVE_AVX2_PATH
  if (cpu_has_avx2()) {
    i = cnt / kSumLanes * kSumLanes;
#if TNQ_HAVE_AVX512_PATH
    if (cpu_has_avx512())
      abs_sum_lanes_avx512<DT, SQUARES>(x, i, acc, acc2);
    else
#endif
      abs_sum_lanes_avx2<DT, SQUARES>(x, i, acc, acc2);
  } else
#endif
  {
    std::fill(acc, acc + kSumLanes, 0.0);
    std::fill(acc2, acc2 + kSumLanes, 0.0);
  }
  for (; i + kSumLanes <= cnt; i += kSumLanes)
    for (int j = 0; j < kSumLanes; ++j) {
      const double a = std::fabs(double(Src<DT>::load(x[i + j])));
      acc[j] += a;
      if constexpr (SQUARES) acc2[j] += a * a;
    }
  for (; i < cnt; ++i) {
    const double a = std::fabs(double(Src<DT>::load(x[i])));
    acc[0] += a;
    if constexpr (SQUARES) acc2[0] += a * a;
  }
  *s1 = sum_lanes(acc);
  *s2 = SQUARES ? sum_lanes(acc2) : 0.0;
}

// max|g| in fp32 (exact in any order); a NaN anywhere makes the result NaN, as torch.amax does.
template <int DT>
inline float abs_max(const typename Src<DT>::T* x, int64_t cnt) {
  float m[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int nan = 0;
  int64_t i = 0;
#if TNQ_HAVE_AVX2_PATH
  if (cpu_has_avx2()) {
    i = cnt / 8 * 8;
    nan = abs_max_lanes_avx2<DT>(x, i, m);
  }
#endif
  for (; i + 8 <= cnt; i += 8)
    for (int j = 0; j < 8; ++j) {
      const float a = std::fabs(Src<DT>::load(x[i + j]));
      nan |= a != a;
      m[j] = a > m[j] ? a : m[j];
    }
  for (; i < cnt; ++i) {
    const float a = std::fabs(Src<DT>::load(x[i]));
    nan |= a != a;
    m[0] = a > m[0] ? a : m[0];
  }
  float r = m[0];
  for (int j = 1; j < 8; ++j) r = m[j] > r ? m[j] : r;
  return nan ? std::numeric_limits<float>::quiet_NaN() : r;
}

inline float mean_scale(double sum, int64_t cnt) {
  return cnt == 0 ? 0.0f : static_cast<float>(sum / double(cnt));
}

// The fp32 scale of the sum rules from fp64 sums, each rounded once to fp32 as the reference: mean|g|, ‖g‖₂ =
// sqrt(Σg²) (IEEE sqrt, correctly rounded), Σg²/(2Σ|g|) (0 for an all-zero block; NaN for a non-finite one).
inline float finish_scale(int rule, double s1, double s2, int64_t cnt) {
  if (rule == kScaleL2) return static_cast<float>(std::sqrt(s2));
  if (rule == kScaleM2M1) return s1 == 0.0 ? 0.0f : static_cast<float>(s2 / (2.0 * s1));
  return mean_scale(s1, cnt);
}

template <int DT>
inline float block_scale(const typename Src<DT>::T* x, int64_t cnt, int rule) {
  if (rule == kScaleMaxAbs) return abs_max<DT>(x, cnt);
  double s1, s2;
  if (rule == kScaleMeanAbs)
    abs_sums_f64<DT, false>(x, cnt, &s1, &s2);
  else
    abs_sums_f64<DT, true>(x, cnt, &s1, &s2);
  return finish_scale(rule, s1, s2, cnt);
}

// The scale of a whole tensor (block_size 0): a parallel reduction over fixed 64 Ki-element chunks — fixed, so
// the result does not depend on the thread count — combined in chunk order. The fused compress then needs a
// second read of x for the quantize pass, unavoidably.
template <int DT>
inline float whole_tensor_scale(const typename Src<DT>::T* x, int64_t n, int rule) {
  constexpr int64_t kChunk = int64_t(1) << 16;
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  const bool use_max = rule == kScaleMaxAbs;
  std::vector<double> part(nchunks), part2(nchunks, 0.0);
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t cnt = std::min(kChunk, n - c * kChunk);
      if (use_max)
        part[c] = double(abs_max<DT>(x + c * kChunk, cnt));
      else if (rule == kScaleMeanAbs)
        abs_sums_f64<DT, false>(x + c * kChunk, cnt, &part[c], &part2[c]);
      else
        abs_sums_f64<DT, true>(x + c * kChunk, cnt, &part[c], &part2[c]);
    }
  });
  if (!use_max) {
    double s = 0.0, s2 = 0.0;
    for (int64_t c = 0; c < nchunks; ++c) {
      s += part[c];
      s2 += part2[c];
    }
    return finish_scale(rule, s, s2, n);
  }
  float m = 0.0f;
  bool nan = false;
  for (double v : part) {
    nan |= v != v;
    m = float(v) > m ? float(v) : m;
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : m;
}

// How a block's z is formed: g·r, all zero (scale 0), or all c_0 (non-finite scale, codes 0).
enum BlockMode : int { kUsable = 0, kZeroScale = 1, kNonFinite = 2 };
inline BlockMode block_mode(float scale) {
  if (!std::isfinite(scale)) return kNonFinite;
  return scale > 0.0f ? kUsable : kZeroScale;
}

// r = fp32(1/scale): the one IEEE division of a block (the v1.1 encode (docs/format.md)). Capped at FLT_MAX as reference.inverse_scale:
// below 2^-128 the quotient overflows, and 0·inf would turn a zero element into NaN.
inline float inverse_scale(float scale) {
  const float r = 1.0f / scale;
  return r > std::numeric_limits<float>::max() ? std::numeric_limits<float>::max() : r;
}

// z = clamp(g·r, c_0, c_s) with z = 0 for a zero scale; r from inverse_scale, one fp32 multiply per element.
inline float truncate(float g, float r, BlockMode mode, float lo, float hi) {
  float z = mode == kUsable ? g * r : 0.0f;
  z = z < lo ? lo : z;
  return z > hi ? hi : z;
}

// ---- job 2: codebook lookup + stochastic rounding ----
// k = number of interior levels <= z by a branchless binary search over the padded table; p from the real gaps;
// m: the element's 16 random bits (SPEC v1.2), U = (m + 0.5) · 2^-16; NEAREST: U = kNearestU, m unused.
template <int BITS, bool NEAREST = false>
inline uint32_t round_code(float z, const Tables& t, uint32_t m) {
  int k = 0;
#pragma GCC unroll 8
  for (int step = 1 << (BITS - 1); step > 0; step >>= 1) k += (z >= t.search[k + step]) ? step : 0;
  const float p = (z - t.c[k]) * t.inv_gap[k];
  return uint32_t(k) + ((NEAREST ? kNearestU : uniform16(m)) < p ? 1u : 0u);
}

// The pair key is constant over 2^28 groups (2^33 elements, one j_hi): the encode loops take one key for a run of
// groups that never crosses a multiple of kGroupsPerKey.
constexpr int64_t kGroupsPerKey = int64_t(1) << 28;

// ---- job 3: pack / unpack one group of 32 codes <-> BITS bit-plane words ----
template <int BITS>
inline void pack_group(const uint8_t* code, uint32_t* w) {
#if defined(__SSE2__)
  // Shifting 16-bit lanes left by 7-p puts bit p of every byte in that byte's top bit; movemask collects them.
  const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(code));
  const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(code + 16));
#pragma GCC unroll 8
  for (int p = 0; p < BITS; ++p) {
    const uint32_t a = uint32_t(_mm_movemask_epi8(_mm_slli_epi16(lo, 7 - p)));
    const uint32_t b = uint32_t(_mm_movemask_epi8(_mm_slli_epi16(hi, 7 - p)));
    w[p] = a | (b << 16);
  }
#else
  for (int p = 0; p < BITS; ++p) {
    uint32_t v = 0;
    for (int j = 0; j < 32; ++j) v |= uint32_t((code[j] >> p) & 1) << j;
    w[p] = v;
  }
#endif
}

template <int BITS>
inline void unpack_group(const uint8_t* wbytes, uint8_t* code) {
  uint32_t w[BITS];
  std::memcpy(w, wbytes, sizeof(w));  // payload words need not be 4-byte aligned
  for (int j = 0; j < 32; ++j) code[j] = 0;
#pragma GCC unroll 8
  for (int p = 0; p < BITS; ++p)
    for (int j = 0; j < 32; ++j) code[j] |= uint8_t(((w[p] >> j) & 1u) << p);
}

}  // namespace cpu
}  // namespace tnq
