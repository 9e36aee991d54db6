// The three jobs as separate ops (for tests and for composing backends); simple parallel loops over the same
// inline building blocks the fused kernels use, so stage-by-stage and fused results agree by construction.
#include <ATen/Parallel.h>

#include <algorithm>

#include "inline.h"

namespace tnq {
namespace cpu {
namespace {

template <int DT>
void scale_truncate_impl(const typename Src<DT>::T* x, int64_t n, int bits, int64_t block_size, int codebook,
                         float* scales, float* z) {
  const Tables& t = tables(codebook, bits);
  const float lo = t.c[0], hi = t.c[t.s];
  const int rule = scale_rule(codebook);
  // B = 0 is cut into 64 Ki-element pieces of one block so that both passes run in parallel
  const int64_t bs = block_size == 0 ? (int64_t(1) << 16) : block_size;
  const int64_t nblocks = (n + bs - 1) / bs;
  const float whole = block_size == 0 ? whole_tensor_scale<DT>(x, n, rule) : 0.0f;
  if (block_size == 0) scales[0] = whole;
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * bs, cnt = std::min(bs, n - i0);
      float scale = whole;
      if (block_size != 0) {
        scale = block_scale<DT>(x + i0, cnt, rule);
        scales[b] = scale;
      }
      const BlockMode mode = block_mode(scale);
      const float r = inverse_scale(scale);
      for (int64_t j = 0; j < cnt; ++j)
        z[i0 + j] = mode == kNonFinite ? lo : truncate(Src<DT>::load(x[i0 + j]), r, mode, lo, hi);
    }
  });
}

template <int BITS, bool NEAREST>
void quantize_impl(const float* z, int64_t n, int codebook, uint64_t seed, uint8_t* codes) {
  const Tables& t = tables(codebook, BITS);
  const SeedKeys keys = seed_keys(seed);
  at::parallel_for(0, n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float v = z[i];
      // the reference's searchsorted puts NaN after every level (k = s-1), and p = NaN never rounds up
      const uint32_t m = NEAREST ? 0u : bits16(keys, uint64_t(i));
      codes[i] = v != v ? uint8_t(t.s - 1) : uint8_t(round_code<BITS, NEAREST>(v, t, m));
    }
  });
}

template <int BITS>
void pack_impl(const uint8_t* codes, int64_t n, uint32_t* words) {
  const int64_t ngroups = (n + kGroup - 1) / kGroup;
  at::parallel_for(0, ngroups, 1024, [&](int64_t g0, int64_t g1) {
    alignas(32) uint8_t buf[kGroup];
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t cnt = std::min(kGroup, n - g * kGroup);
      for (int64_t j = 0; j < kGroup; ++j) buf[j] = j < cnt ? codes[g * kGroup + j] : 0;
      pack_group<BITS>(buf, words + g * BITS);
    }
  });
}

template <int BITS>
void unpack_impl(const uint32_t* words, int64_t n, uint8_t* codes) {
  const int64_t ngroups = (n + kGroup - 1) / kGroup;
  at::parallel_for(0, ngroups, 1024, [&](int64_t g0, int64_t g1) {
    alignas(32) uint8_t buf[kGroup];
    for (int64_t g = g0; g < g1; ++g) {
      unpack_group<BITS>(reinterpret_cast<const uint8_t*>(words + g * BITS), buf);
      const int64_t cnt = std::min(kGroup, n - g * kGroup);
      std::memcpy(codes + g * kGroup, buf, size_t(cnt));
    }
  });
}

}  // namespace

void scale_truncate(const void* x, int dtype_id, int64_t n, int bits, int64_t block_size, int codebook,
                    float* scales, float* z) {
  if (n == 0) {
    if (block_size == 0) scales[0] = 0.0f;
    return;
  }
  TNQ_DISPATCH_DTYPE(dtype_id, scale_truncate_impl<DT>(static_cast<const typename Src<DT>::T*>(x), n, bits,
                                                       block_size, codebook, scales, z));
}

void quantize(const float* z, int64_t n, int bits, int codebook, uint64_t seed, int rounding, uint8_t* codes) {
  if (rounding == kNearest) {
    TNQ_DISPATCH_BITS(bits, quantize_impl<BITS, true>(z, n, codebook, seed, codes));
  } else {
    TNQ_DISPATCH_BITS(bits, quantize_impl<BITS, false>(z, n, codebook, seed, codes));
  }
}

void pack(const uint8_t* codes, int64_t n, int bits, uint32_t* words) {
  TNQ_DISPATCH_BITS(bits, pack_impl<BITS>(codes, n, words));
}

void unpack(const uint32_t* words, int64_t n, int bits, uint8_t* codes) {
  TNQ_DISPATCH_BITS(bits, unpack_impl<BITS>(words, n, codes));
}

const char* simd_path() {
#if TNQ_HAVE_AVX512_PATH
  if (cpu_has_avx512()) return "avx512";
#endif
#if TNQ_HAVE_AVX2_PATH
  if (cpu_has_avx2()) return "avx2";
#endif
  return "portable";
}

}  // namespace cpu
}  // namespace tnq
