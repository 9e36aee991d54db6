// Fused compress on CPU: one pass per block — read the block, reduce its scale, then quantize and pack its
// 32-element groups while the block is still in cache; write its scale and words once.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "inline.h"

namespace tnq {
namespace cpu {
namespace {

// Quantize + pack groups [g0, g1) of x, all in one block of scale `scale`. Elements >= n get code 0.
template <int DT, int BITS>
TNQ_CLONES void encode_groups(const typename Src<DT>::T* x, int64_t n, int64_t g0, int64_t g1, float scale,
                              const Tables& t, SeedKeys keys, uint32_t* words) {
  const BlockMode mode = block_mode(scale);
  if (mode == kNonFinite) {  // z = c_0 gives k = 0, p = 0: every code is 0
    std::fill(words + g0 * BITS, words + g1 * BITS, 0u);
    return;
  }
  const float lo = t.c[0], hi = t.c[t.s];
  alignas(32) float z[kGroup];
  alignas(32) uint8_t code[kGroup];
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t i0 = g * kGroup;
    const int64_t cnt = std::min<int64_t>(kGroup, n - i0);
    if (cnt == kGroup) {
      for (int j = 0; j < kGroup; ++j) z[j] = truncate(Src<DT>::load(x[i0 + j]), scale, mode, lo, hi);
    } else {
      for (int j = 0; j < kGroup; ++j) z[j] = j < cnt ? truncate(Src<DT>::load(x[i0 + j]), scale, mode, lo, hi) : 0.f;
    }
    for (int j = 0; j < kGroup; ++j) code[j] = uint8_t(round_code<BITS>(z[j], t, hash_index(keys, uint64_t(i0 + j))));
    for (int64_t j = cnt; j < kGroup; ++j) code[j] = 0;  // tail codes are zero on the wire
    pack_group<BITS>(code, words + g * BITS);
  }
}

template <int DT>
float block_scale(const typename Src<DT>::T* x, int64_t cnt, bool use_max) {
  return use_max ? abs_max<DT>(x, cnt) : mean_scale(abs_sum_f64<DT>(x, cnt), cnt);
}

template <int DT, int BITS>
bool compress_impl(const typename Src<DT>::T* x, int64_t n, int64_t block_size, int codebook, uint64_t seed,
                   float* scales, uint32_t* words) {
  const Tables& t = tables(codebook, BITS);
  const SeedKeys keys = seed_keys(seed);
  const bool use_max = scale_is_max(codebook);
  const int64_t ngroups = (n + kGroup - 1) / kGroup;
  if (block_size == 0) {
    const float scale = whole_tensor_scale<DT>(x, n, use_max);
    scales[0] = scale;
    at::parallel_for(0, ngroups, 2048, [&](int64_t g0, int64_t g1) {
      encode_groups<DT, BITS>(x, n, g0, g1, scale, t, keys, words);
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
      const float scale = block_scale<DT>(x + i0, cnt, use_max);
      scales[b] = scale;
      bad |= !std::isfinite(scale);
      encode_groups<DT, BITS>(x, n, b * gpb, std::min(ngroups, (b + 1) * gpb), scale, t, keys, words);
    }
    if (bad) nonfinite.store(true, std::memory_order_relaxed);
  });
  return nonfinite.load();
}

}  // namespace

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
