// Fused compress on CPU: one pass per block — read the block, reduce its scale, then quantize and pack its
// 32-element groups while the block is still in cache; write its scale and words once.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <vector>

#include "inline.h"


namespace tnq {
namespace cpu {
namespace {

#if TNQ_HAVE_AVX2_PATH
// Binary search level by level: at depth d the probe can only be one of 2^d levels (t.level[d]), indexed by
// the bits m of k found so far, so the first depths are broadcasts and small permutes rather than gathers.
// The last probe that succeeded sits at index k, so c_k comes out of the search by a blend, not a lookup
// (`ck` starts at c_0, for z below every interior level).
template <int D, int BITS>
TNQ_AVX2 inline __m256i search_levels(__m256 z, const Tables& t, __m256i m, __m256& ck) {
  if constexpr (D == BITS) {
    return m;
  } else {
    const __m256 probe = lookup<(1 << D)>(t.level[D], m);
    const __m256 ge = _mm256_cmp_ps(z, probe, _CMP_GE_OQ);
    ck = _mm256_blendv_ps(ck, probe, ge);
    m = _mm256_add_epi32(_mm256_add_epi32(m, m), _mm256_srli_epi32(_mm256_castps_si256(ge), 31));
    return search_levels<D + 1, BITS>(z, t, m, ck);
  }
}

// Full groups [g0, g1) of one block with a finite scale; same operations as round_code/truncate, lane-wise.
// x and words point at group g0's first element and first word; g0 is the global group index (for the hash).
template <int DT, int BITS>
TNQ_AVX2 void encode_full_groups_avx2(const typename Src<DT>::T* x, int64_t g0, int64_t g1, float scale,
                                      BlockMode mode, const Tables& t, SeedKeys keys, uint32_t* words) {
  constexpr int S = (1 << BITS) - 1;
  const __m256 vr = _mm256_set1_ps(inverse_scale(scale));
  const __m256 lo = _mm256_set1_ps(t.c[0]), hi = _mm256_set1_ps(t.c[S]);
  const __m256 u_scale = _mm256_set1_ps(1.0f / 16777216.0f);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i key0 = _mm256_set1_epi32(int(keys.key0));
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t i0 = g * kGroup;
    // a group never straddles a multiple of 2^32, so the high index word is the same for all its lanes
    const __m256i hi_key = _mm256_set1_epi32(int(uint32_t(uint64_t(i0) >> 32) ^ keys.key1));
    uint32_t w[BITS] = {};
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      __m256 z = mode == kUsable ? _mm256_mul_ps(load8<DT>(x + (g - g0) * kGroup + 8 * v), vr) : _mm256_setzero_ps();
      z = _mm256_min_ps(_mm256_max_ps(z, lo), hi);
      // Binary search level by level: at level d the probe can only be one of 2^d levels (t.level[d]), indexed
      // by the bits of k found so far, so the first levels are broadcasts and small permutes, not gathers.
      __m256 ck = lo;
      const __m256i k = search_levels<0, BITS>(z, t, _mm256_setzero_si256(), ck);
      const __m256 p = _mm256_mul_ps(_mm256_sub_ps(z, ck), lookup<S>(t.inv_gap, k));
      const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(int(uint32_t(i0 + 8 * v))), lane);
      __m256i h = fmix32_x8(_mm256_xor_si256(idx, key0));
      h = fmix32_x8(_mm256_add_epi32(h, hi_key));
      const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(h, 8)), u_scale);
      const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(u, p, _CMP_LT_OQ));
      const __m256i code = _mm256_sub_epi32(k, up);  // up is -1 where the value rounds up
#pragma GCC unroll 8
      for (int b = 0; b < BITS; ++b)
        w[b] |= uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(code, 31 - b)))) << (8 * v);
    }
    std::memcpy(words + (g - g0) * BITS, w, sizeof(w));
  }
}

#endif  // TNQ_HAVE_AVX2_PATH

// Quantize + pack groups [g0, g1), all in one block of scale `scale`; x and words point at group g0's first
// element and first word, g0 is the global group index (the hash is keyed by global element indices). Elements
// at global index >= n get code 0.
template <int DT, int BITS>
TNQ_CLONES void encode_groups(const typename Src<DT>::T* x, int64_t n, int64_t g0, int64_t g1, float scale,
                              const Tables& t, SeedKeys keys, uint32_t* words) {
  const BlockMode mode = block_mode(scale);
  if (mode == kNonFinite) {  // z = c_0 gives k = 0, p = 0: every code is 0
    std::fill(words, words + (g1 - g0) * BITS, 0u);
    return;
  }
#if TNQ_HAVE_AVX2_PATH
  if (cpu_has_avx2()) {
    const int64_t full_end = std::min(g1, n / kGroup);  // groups holding 32 real elements
    if (full_end > g0) {
      encode_full_groups_avx2<DT, BITS>(x, g0, full_end, scale, mode, t, keys, words);
      x += (full_end - g0) * kGroup;
      words += (full_end - g0) * BITS;
      g0 = full_end;
    }
  }
#endif
  const float lo = t.c[0], hi = t.c[t.s], r = inverse_scale(scale);
  alignas(32) float z[kGroup];
  alignas(32) uint8_t code[kGroup];
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t i0 = g * kGroup;
    const int64_t cnt = std::min<int64_t>(kGroup, n - i0);
    if (cnt == kGroup) {
      for (int j = 0; j < kGroup; ++j) z[j] = truncate(Src<DT>::load(x[(g - g0) * kGroup + j]), r, mode, lo, hi);
    } else {
      for (int j = 0; j < kGroup; ++j) z[j] = j < cnt ? truncate(Src<DT>::load(x[(g - g0) * kGroup + j]), r, mode, lo, hi) : 0.f;
    }
    for (int j = 0; j < kGroup; ++j) code[j] = uint8_t(round_code<BITS>(z[j], t, hash_index(keys, uint64_t(i0 + j))));
    for (int64_t j = cnt; j < kGroup; ++j) code[j] = 0;  // tail codes are zero on the wire
    pack_group<BITS>(code, words + (g - g0) * BITS);
  }
}

template <int DT, int BITS>
bool compress_impl(const typename Src<DT>::T* x, int64_t n, int64_t block_size, int codebook, uint64_t seed,
                   float* scales, uint32_t* words) {
  const Tables& t = tables(codebook, BITS);
  const SeedKeys keys = seed_keys(seed);
  const int rule = scale_rule(codebook);
  const int64_t ngroups = (n + kGroup - 1) / kGroup;
  if (block_size == 0) {
    const float scale = whole_tensor_scale<DT>(x, n, rule);
    scales[0] = scale;
    at::parallel_for(0, ngroups, 2048, [&](int64_t g0, int64_t g1) {
      encode_groups<DT, BITS>(x + g0 * kGroup, n, g0, g1, scale, t, keys, words + g0 * BITS);
    });
    return !std::isfinite(scale);
  }
  const int64_t nblocks = (n + block_size - 1) / block_size;
  const int64_t gpb = block_size / kGroup;  // groups per block
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / block_size);
  std::atomic<bool> nonfinite{false};
  at::parallel_for(0, nblocks, grain, [&](int64_t b0, int64_t b1) {
    bool bad = false;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * block_size;
      const int64_t cnt = std::min(block_size, n - i0);
      const float scale = block_scale<DT>(x + i0, cnt, rule);
      scales[b] = scale;
      bad |= !std::isfinite(scale);
      encode_groups<DT, BITS>(x + i0, n, b * gpb, std::min(ngroups, (b + 1) * gpb), scale, t, keys,
                              words + b * gpb * BITS);
    }
    if (bad) nonfinite.store(true, std::memory_order_relaxed);
  });
  return nonfinite.load();
}

}  // namespace

void encode_at(const float* x, int64_t ngroups, int64_t first_group, float scale, int bits, int codebook,
               uint64_t seed, uint32_t* words) {
  const SeedKeys keys = seed_keys(seed);
  const int64_t n = (first_group + ngroups) * kGroup;
  TNQ_DISPATCH_BITS(bits, encode_groups<kFloat32, BITS>(x, n, first_group, first_group + ngroups, scale,
                                                          tables(codebook, BITS), keys, words));
}

bool compress(const void* x, int dtype_id, int64_t n, int bits, int64_t block_size, int codebook, uint64_t seed,
              float* scales, uint32_t* words) {
  if (n == 0) {
    if (block_size == 0) scales[0] = 0.0f;  // B = 0 keeps its one (zero) scale; B > 0 has no blocks at all
    return false;
  }
  bool bad = false;
  TNQ_DISPATCH_DTYPE(dtype_id, TNQ_DISPATCH_BITS(bits, {
    bad = compress_impl<DT, BITS>(static_cast<const typename Src<DT>::T*>(x), n, block_size, codebook, seed,
                                  scales, words);
  }));
  return bad;
}

}  // namespace cpu
}  // namespace tnq
