// decompress / decompress_sum on CPU: each output chunk is decoded from every payload in turn into an fp32
// accumulator that stays in L1, then cast once to the output dtype — no W x n temporary.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>

#include "inline.h"


namespace tnq {
namespace cpu {
namespace {

constexpr int64_t kChunkGroups = 64;  // 2048 elements: 8 KiB of fp32 accumulator

inline float load_scale(const uint8_t* scales, int64_t b) {
  float s;
  std::memcpy(&s, scales + 4 * b, 4);
  return s;
}

// acc[0 .. 32*(g1-g0)) (op)= weight * (scale * c[code]) for groups [g0, g1) of one payload. FIRST: assign.
template <int BITS, bool FIRST, bool WEIGHTED>
TNQ_CLONES void decode_groups(const PayloadView& pv, int64_t g0, int64_t g1, float weight, float* acc) {
  const Tables& t = tables(pv.codebook, BITS);
  const int64_t gpb = pv.block_size / kGroup;
  alignas(32) uint8_t code[kGroup];
  for (int64_t g = g0; g < g1; ++g) {
    const float scale = load_scale(pv.scales, gpb == 0 ? 0 : g / gpb);
    unpack_group<BITS>(pv.words + 4 * BITS * g, code);
    float* a = acc + (g - g0) * kGroup;
    for (int j = 0; j < kGroup; ++j) {
      float v = scale * t.c[code[j]];
      if (WEIGHTED) v = weight * v;
      a[j] = FIRST ? v : a[j] + v;
    }
  }
}

#if TNQ_HAVE_AVX2_PATH
// Same arithmetic as decode_groups, 8 lanes at a time: lane j of vector v takes bit 8v+j of every bit-plane.
template <int BITS, bool FIRST, bool WEIGHTED>
TNQ_AVX2 void decode_groups_avx2(const PayloadView& pv, int64_t g0, int64_t g1, float weight, float* acc) {
  const Tables& t = tables(pv.codebook, BITS);
  const int64_t gpb = pv.block_size / kGroup;
  const __m256 vweight = _mm256_set1_ps(weight);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i one = _mm256_set1_epi32(1);
  for (int64_t g = g0; g < g1; ++g) {
    const __m256 scale = _mm256_set1_ps(load_scale(pv.scales, gpb == 0 ? 0 : g / gpb));
    uint32_t w[BITS];
    std::memcpy(w, pv.words + 4 * BITS * g, sizeof(w));
    float* a = acc + (g - g0) * kGroup;
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const __m256i shift = _mm256_add_epi32(lane, _mm256_set1_epi32(8 * v));
      __m256i code = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int b = 0; b < BITS; ++b) {
        const __m256i bit = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(w[b])), shift), one);
        code = _mm256_or_si256(code, _mm256_slli_epi32(bit, b));
      }
      __m256 val = _mm256_mul_ps(scale, lookup<(1 << BITS)>(t.c, code));
      if (WEIGHTED) val = _mm256_mul_ps(vweight, val);
      if (!FIRST) val = _mm256_add_ps(_mm256_loadu_ps(a + 8 * v), val);
      _mm256_storeu_ps(a + 8 * v, val);
    }
  }
}

#endif  // TNQ_HAVE_AVX2_PATH

#if TNQ_HAVE_AVX512_PATH
// Same arithmetic again, 16 lanes: bit plane b of the group is a mask that adds 2^b to its lanes' codes.
template <int BITS, bool FIRST, bool WEIGHTED>
TNQ_AVX512 void decode_groups_avx512(const PayloadView& pv, int64_t g0, int64_t g1, float weight, float* acc) {
  const Tables& t = tables(pv.codebook, BITS);
  const int64_t gpb = pv.block_size / kGroup;
  const __m512 vweight = _mm512_set1_ps(weight);
  for (int64_t g = g0; g < g1; ++g) {
    const __m512 scale = _mm512_set1_ps(load_scale(pv.scales, gpb == 0 ? 0 : g / gpb));
    uint32_t w[BITS];
    std::memcpy(w, pv.words + 4 * BITS * g, sizeof(w));
    float* a = acc + (g - g0) * kGroup;
#pragma GCC unroll 2
    for (int v = 0; v < 2; ++v) {
      __m512i code = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int b = 0; b < BITS; ++b)
        code = _mm512_mask_or_epi32(code, __mmask16(w[b] >> (16 * v)), code, _mm512_set1_epi32(1 << b));
      __m512 val = _mm512_mul_ps(scale, lookup16<(1 << BITS), __m512>(t.c, code));
      if (WEIGHTED) val = _mm512_mul_ps(vweight, val);
      if (!FIRST) val = _mm512_add_ps(_mm512_loadu_ps(a + 16 * v), val);
      _mm512_storeu_ps(a + 16 * v, val);
    }
  }
}
#endif  // TNQ_HAVE_AVX512_PATH

template <bool FIRST, bool WEIGHTED>
void decode_into(const PayloadView& pv, int64_t g0, int64_t g1, float weight, float* acc) {
#if TNQ_HAVE_AVX512_PATH
  if (pv.bits <= 6 && cpu_has_avx512()) {
    switch (pv.bits) {
      case 1: decode_groups_avx512<1, FIRST, WEIGHTED>(pv, g0, g1, weight, acc); return;
      case 2: decode_groups_avx512<2, FIRST, WEIGHTED>(pv, g0, g1, weight, acc); return;
      case 3: decode_groups_avx512<3, FIRST, WEIGHTED>(pv, g0, g1, weight, acc); return;
      case 4: decode_groups_avx512<4, FIRST, WEIGHTED>(pv, g0, g1, weight, acc); return;
      case 5: decode_groups_avx512<5, FIRST, WEIGHTED>(pv, g0, g1, weight, acc); return;
      default: decode_groups_avx512<6, FIRST, WEIGHTED>(pv, g0, g1, weight, acc); return;
    }
  }
#endif
#if TNQ_HAVE_AVX2_PATH
  if (cpu_has_avx2()) {
    TNQ_DISPATCH_BITS(pv.bits, decode_groups_avx2<BITS, FIRST, WEIGHTED>(pv, g0, g1, weight, acc));
    return;
  }
#endif
  TNQ_DISPATCH_BITS(pv.bits, decode_groups<BITS, FIRST, WEIGHTED>(pv, g0, g1, weight, acc));
}

#if TNQ_HAVE_AVX512_PATH
template <int DT>
TNQ_AVX512 int64_t store_avx512(const float* acc, int64_t cnt, typename Src<DT>::T* out) {
  int64_t j = 0;
  for (; j + 16 <= cnt; j += 16) store16<DT>(_mm512_loadu_ps(acc + j), out + j);
  return j;
}
#endif

template <int DT>
void store(const float* acc, int64_t cnt, typename Src<DT>::T* out) {
  int64_t j = 0;
#if TNQ_HAVE_AVX512_PATH
  if (cpu_has_avx512()) j = store_avx512<DT>(acc, cnt, out);
#endif
  for (; j < cnt; ++j) out[j] = Src<DT>::store(acc[j]);
}

#if TNQ_HAVE_AVX512_PATH
// W >= 2 payloads of equal bits, whole groups [g0, g1): each 16-lane vector decoded from every payload in registers
// and summed in order w = 0, 1, ... (the first term initialises the sum), then stored once as DT: the same
// operations as decode_groups + store, without the accumulator's round trip through memory per payload.
template <int BITS, int DT, bool WEIGHTED>
TNQ_AVX512 void sum_groups_avx512(const PayloadView* pv, const float* const* levels, const float* weights,
                                  int64_t num_payloads, int64_t g0, int64_t g1, typename Src<DT>::T* out) {
  for (int64_t g = g0; g < g1; ++g) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int64_t w = 0; w < num_payloads; ++w) {
      const int64_t gpb = pv[w].block_size / kGroup;
      const __m512 scale = _mm512_set1_ps(load_scale(pv[w].scales, gpb == 0 ? 0 : g / gpb));
      uint32_t wd[BITS];
      std::memcpy(wd, pv[w].words + 4 * BITS * g, sizeof(wd));
      __m512i code0 = _mm512_setzero_si512(), code1 = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int b = 0; b < BITS; ++b) {
        code0 = _mm512_mask_or_epi32(code0, __mmask16(wd[b]), code0, _mm512_set1_epi32(1 << b));
        code1 = _mm512_mask_or_epi32(code1, __mmask16(wd[b] >> 16), code1, _mm512_set1_epi32(1 << b));
      }
      __m512 v0 = _mm512_mul_ps(scale, lookup16<(1 << BITS), __m512>(levels[w], code0));
      __m512 v1 = _mm512_mul_ps(scale, lookup16<(1 << BITS), __m512>(levels[w], code1));
      if (WEIGHTED) {
        const __m512 vw = _mm512_set1_ps(weights[w]);
        v0 = _mm512_mul_ps(vw, v0);
        v1 = _mm512_mul_ps(vw, v1);
      }
      acc0 = w == 0 ? v0 : _mm512_add_ps(acc0, v0);
      acc1 = w == 0 ? v1 : _mm512_add_ps(acc1, v1);
    }
    store16<DT>(acc0, out + (g - g0) * kGroup);
    store16<DT>(acc1, out + (g - g0) * kGroup + 16);
  }
}

// True when it ran (every payload has the same bits <= 6 and the CPU has AVX-512).
template <int DT>
bool sum_fused(const PayloadView* pv, const float* const* levels, const float* weights, int64_t num_payloads,
               int64_t g0, int64_t g1, typename Src<DT>::T* out) {
  const int bits = pv[0].bits;
  if (num_payloads < 2 || bits > 6 || !cpu_has_avx512()) return false;
  for (int64_t w = 1; w < num_payloads; ++w)
    if (pv[w].bits != bits) return false;
  switch (bits) {
#define TNQ_SUM_CASE(B)                                                                                    \
    case B:                                                                                                 \
      if (weights) sum_groups_avx512<B, DT, true>(pv, levels, weights, num_payloads, g0, g1, out);          \
      else sum_groups_avx512<B, DT, false>(pv, levels, weights, num_payloads, g0, g1, out);                 \
      return true;
    TNQ_SUM_CASE(1) TNQ_SUM_CASE(2) TNQ_SUM_CASE(3) TNQ_SUM_CASE(4) TNQ_SUM_CASE(5) TNQ_SUM_CASE(6)
#undef TNQ_SUM_CASE
    default: return false;
  }
}
#endif  // TNQ_HAVE_AVX512_PATH

}  // namespace

void decompress_sum(const PayloadView* payloads, const float* weights, int64_t num_payloads, int64_t n,
                    int out_dtype_id, void* out) {
  const int64_t ngroups = (n + kGroup - 1) / kGroup;
  const int64_t nchunks = (ngroups + kChunkGroups - 1) / kChunkGroups;
  std::vector<const float*> levels(num_payloads);
  for (int64_t w = 0; w < num_payloads; ++w) levels[w] = tables(payloads[w].codebook, payloads[w].bits).c;
  at::parallel_for(0, nchunks, 4, [&](int64_t c0, int64_t c1) {
    alignas(64) float acc_chunk[kChunkGroups * kGroup];
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t g0 = c * kChunkGroups, g1 = std::min(ngroups, g0 + kChunkGroups);
      const int64_t i0 = g0 * kGroup, cnt = std::min(n, g1 * kGroup) - i0;
#if TNQ_HAVE_AVX512_PATH
      if (cnt == (g1 - g0) * kGroup) {
        bool done = false;
        TNQ_DISPATCH_DTYPE(out_dtype_id, done = sum_fused<DT>(payloads, levels.data(), weights, num_payloads, g0, g1,
                                                              static_cast<typename Src<DT>::T*>(out) + i0));
        if (done) continue;
      }
#endif
      // fp32 out and whole groups: decode straight into out, no second pass through the accumulator
      const bool direct = out_dtype_id == kFloat32 && cnt == (g1 - g0) * kGroup;
      float* acc = direct ? static_cast<float*>(out) + i0 : acc_chunk;
      for (int64_t w = 0; w < num_payloads; ++w) {
        if (weights == nullptr) {
          if (w == 0) decode_into<true, false>(payloads[w], g0, g1, 1.0f, acc);
          else decode_into<false, false>(payloads[w], g0, g1, 1.0f, acc);
        } else {
          if (w == 0) decode_into<true, true>(payloads[w], g0, g1, weights[w], acc);
          else decode_into<false, true>(payloads[w], g0, g1, weights[w], acc);
        }
      }
      if (direct) continue;
      TNQ_DISPATCH_DTYPE(out_dtype_id, store<DT>(acc, cnt, static_cast<typename Src<DT>::T*>(out) + i0));
    }
  });
}

}  // namespace cpu
}  // namespace tnq
