// The GPU's O(1) cell index (csrc/cuda): a bin of z computed with two fp32 fused multiply-adds and no conversion,
// and the per-(codebook, bits) table that turns a bin into the cell with one compare. The device function and the
// host builder share gpu_bin below, so the table is built from exactly the bins the kernels compute.
// Plain C++ (TNQ_HD from tnq_constants.h): g++ compiles the builder into the CPU tables, nvcc the device side,
// and tests/test_cuda_host.py compiles both into a host program.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "tnq_constants.h"

namespace tnq {

constexpr int kGpuMaxBins = 256;  // bins 0..nb, nb <= kGpuMaxBins

// The bin of z, in [0, nb] (nb a power of two, bias = 2^23 / nb): u = saturate(z·mul + add) in [0, 1] (NaN -> 0,
// as __saturatef), then t = u + bias rounds u to a multiple of 1/nb (the ulp of t), so the bits of t count bins.
// Monotone in z; three correctly rounded fp32 operations, the same on host and device (no FMA: nothing in the
// kernels is fused).
TNQ_HD uint32_t gpu_bin(float z, float mul, float add, float bias) {
#if defined(__CUDA_ARCH__)
  const float u = __saturatef(__fadd_rn(__fmul_rn(z, mul), add));
  return __float_as_uint(__fadd_rn(u, bias)) - __float_as_uint(bias);
#else
  const float v = z * mul;  // built with -ffp-contract=off: two roundings, as on the device
  float u = v + add;
  u = u > 0.0f ? (u < 1.0f ? u : 1.0f) : 0.0f;  // NaN -> 0
  const float t = u + bias;
  uint32_t a, b;
  std::memcpy(&a, &t, 4);
  std::memcpy(&b, &bias, 4);
  return a - b;
#endif
}

// 2^23 / nb for a power of two nb <= 2^22: the bias of gpu_bin.
inline float gpu_bin_bias(int nb) { return std::ldexp(1.0f, 23 - int(std::lround(std::log2(double(nb))))); }

// Floats <-> integers in the same order, so "the smallest float with property P" is a binary search over ints.
inline int64_t ordered_key(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? -int64_t(u & 0x7fffffffu) : int64_t(u);
}
inline float from_key(int64_t key) {
  const uint32_t u = key < 0 ? uint32_t(-key) | 0x80000000u : uint32_t(key);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The smallest float key in [a, z_end) whose f(key) >= b, or z_end (f monotone non-decreasing in the float order).
template <typename F>
inline int64_t first_key_at_least(int64_t a, int64_t z_end, int64_t b, F&& f) {
  while (a < z_end) {
    const int64_t m = a + (z_end - a) / 2;
    if (f(from_key(m)) >= b) z_end = m; else a = m + 1;
  }
  return a;
}

// nb = 0: no O(1) index for this table (the kernels then use the binary search). Otherwise every float z lies in
// cell lo[gpu_bin(z)] or lo[...] + 1, where the cell of z is the number of interior levels c_1..c_{s-1} <= z (so
// z below c_0 or above c_s, and NaN, are in cells 0, s-1 and bin 0, and need no clamp first).
struct GpuBins {
  int nb = 0;
  float mul = 0.0f, add = 0.0f;
  int32_t lo[kGpuMaxBins + 1] = {};
};

// The fewest bins (a power of two from 8 to kGpuMaxBins) that give every bin at most two cells, for the levels
// c[0..s]; also requires inv_gap[k]·2^16 finite (the kernels compare U·2^16 with p·2^16).
inline GpuBins make_gpu_bins(const float* c, const float* inv_gap, int s) {
  GpuBins g;
  if (s < 1 || s > 31) return g;
  for (int k = 0; k < s; ++k)
    if (!std::isfinite(inv_gap[k] * 65536.0f)) return g;
  const float c0 = c[0], cs = c[s];
  const double width = double(cs) - double(c0);
  const float mul = float(1.0 / width), add = float(-double(c0) / width);
  auto cell_of = [&](float z) {
    int k = 0;
    for (int j = 1; j < s; ++j) k += c[j] <= z ? 1 : 0;
    return k;
  };
  const int64_t k0 = ordered_key(c0), k1 = ordered_key(cs);
  for (int nb = 8; nb <= kGpuMaxBins; nb *= 2) {
    const float bias = gpu_bin_bias(nb);
    auto bin = [&](float z) { return int64_t(gpu_bin(z, mul, add, bias)); };
    bool ok = true;
    int32_t lo[kGpuMaxBins + 1];
    for (int j = 0; j <= nb && ok; ++j) {
      // bin j within [c_0, c_s]: keys [first, next); outside that range z is in bin 0 or nb, cells 0 or s-1
      const int64_t first = first_key_at_least(k0, k1 + 1, j, bin);
      const int64_t next = j < nb ? first_key_at_least(k0, k1 + 1, j + 1, bin) : k1 + 1;
      if (first >= next) {  // no z of [c_0, c_s] in this bin: past c_s (cell s-1), before c_0 (cell 0) or none
        lo[j] = first > k1 ? s - 1 : cell_of(from_key(first));
        continue;
      }
      lo[j] = cell_of(from_key(first));
      ok = cell_of(from_key(next - 1)) - lo[j] <= 1;
    }
    if (ok) {
      g.nb = nb;
      g.mul = mul;
      g.add = add;
      for (int j = 0; j <= kGpuMaxBins; ++j) g.lo[j] = j <= nb ? lo[j] : 0;
      return g;
    }
  }
  return g;
}

}  // namespace tnq
