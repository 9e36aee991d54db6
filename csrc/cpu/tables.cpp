// Codebook level tables: a line-by-line mirror of tnq_kernels/codebooks.py (same fp64 operations in the same
// order, same libm calls), so the fp32 tables agree bit for bit; tests/test_constants.py checks every table.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>

#include "kernels.h"

namespace tnq {
namespace cpu {

double lambert_w0(double x) {
  // Newton on w·e^w − x from log1p(x), below the root for x >= 0, so it converges monotonically.
  double w = std::log1p(x);
  for (int it = 0; it < 64; ++it) {
    const double ew = std::exp(w);
    const double f = w * ew - x;
    const double w_next = w - f / (ew * (w + 1.0));
    if (w_next == w) break;
    w = w_next;
  }
  return w;
}

std::vector<double> levels_f64(int codebook, int bits) {
  const int s = (1 << bits) - 1;
  std::vector<double> out;
  out.reserve(s + 1);
  const double tnq_a = 3.0 * std::sqrt(6.0) / 2.0;
  if (codebook == kTnq || is_rtnq(codebook) || codebook == kTnqMax) {
    // rtnq{N}: a → a/√N (N = 1 divides by exactly 1.0, so rtnq1's table is tnq's); tnq_max: the a whose range
    // 3·ln(1 + s/a) is kTnqMaxAlpha, then every level over the top one
    const double a = codebook == kTnq      ? tnq_a
                     : codebook == kTnqMax ? double(s) / std::expm1(kTnqMaxAlpha / 3.0)
                                           : tnq_a / std::sqrt(double(rtnq_clients(codebook)));
    for (int k = 0; k <= s; ++k) {
      const int d = 2 * k - s;
      const double mag = 3.0 * (-std::log1p(-double(std::abs(d)) / (double(s) + a)));
      out.push_back(std::copysign(mag, double(d)));
    }
    if (codebook == kTnqMax) {
      const double top = out.back();
      for (double& v : out) v = v / top;
    }
    return out;
  }
  if (codebook == kQsgdL2 || codebook == kNuqsgdL2) {
    if (bits == 1) return {-1.0, 1.0};
    // sign × magnitude with a shared zero, then one spare level above the top (codebooks._sign_magnitude)
    const int m = (1 << (bits - 1)) - 1;
    std::vector<double> mags;
    for (int j = 1; j <= m; ++j) mags.push_back(codebook == kQsgdL2 ? double(j) / double(m) : std::ldexp(1.0, j - m));
    const double top = mags.back();
    const double spare = top + (m > 1 ? top - mags[m - 2] : top);
    for (int j = m - 1; j >= 0; --j) out.push_back(-mags[j]);
    out.push_back(0.0);
    for (int j = 0; j < m; ++j) out.push_back(mags[j]);
    out.push_back(spare);
    return out;
  }
  switch (codebook) {
    case kTqsgd: {
      const double w = lambert_w0(double(s) * double(s));
      for (int k = 0; k <= s; ++k) out.push_back(w * (2.0 * k / s - 1.0));
      break;
    }
    case kNqsgd: {
      const int m = 1 << (bits - 1);
      for (int j = 0; j < m; ++j) out.push_back(-std::ldexp(1.0, -j));
      for (int j = m - 1; j >= 0; --j) out.push_back(std::ldexp(1.0, -j));
      break;
    }
    case kQsgd:
      for (int k = 0; k <= s; ++k) out.push_back(2.0 * k / s - 1.0);
      break;
    default:
      break;
  }
  return out;
}

// The bin of z exactly as the AVX-512 kernel computes it: floor(z · mul) + offset (the product of two fp32 values
// is exact in fp64, and the kernel's fused multiply-add rounded toward -inf floors the exact value).
static int64_t bin_of(float z, float mul, int64_t offset) {
  return int64_t(std::floor(double(z) * double(mul))) + offset;
}

// Number of interior levels <= z: the cell k of z (reference: searchsorted(c[1:-1], z, right=True)).
static int cell_of(const Tables& t, float z) {
  int k = 0;
  for (int j = 1; j < t.s; ++j) k += t.c[j] <= z ? 1 : 0;
  return k;
}

// Fills the bin_* fields with the cheapest layout for the kernel that exists: the table width (16 entries: one
// one-source permute per lookup; 32: a two-source permute; 64: two and a blend), then the probes (each one more
// permute, compare and add), then the fewest bins. The bin function is monotone in z, so each bin is an interval
// [first z, last z] of floats and its cells are those of its two ends.
static void make_bins(Tables& t) {
  t.bins = 0;
  if (t.bits > 5) return;  // the AVX-512 kernel's permutes hold 32 levels
  // that kernel tests U < p as (m + 0.5) < p·2^16 with inv_gap16, which must stay finite (it does for every codebook
  // up to 5 bits: the smallest gap is 2^-14)
  if (!t.u16) return;
  const float c0 = t.c[0], cs = t.c[t.s];
  const int64_t k0 = ordered_key(c0), k1 = ordered_key(cs);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int layouts[][2] = {{16, 1}, {16, 2}, {32, 2}, {64, 2}};  // {width, probes}, cheapest first
  for (const auto& layout : layouts) {
    const int width = layout[0], probes = layout[1];
    for (int bins = 2; bins <= width; ++bins) {
      // the largest fp32 multiplier whose bins of [c_0, c_s] number at most `bins`
      float mul = static_cast<float>(double(bins - 1) / (double(cs) - double(c0)));
      while (bin_of(cs, mul, 0) - bin_of(c0, mul, 0) > bins - 1) mul = std::nextafter(mul, 0.0f);
      const int64_t offset = -bin_of(c0, mul, 0);
      bool ok = true;
      int32_t lo[Tables::kMaxBins];
      for (int j = 0; j < bins && ok; ++j) {
        // first float of bin j and first of bin j + 1 (or one past c_s)
        auto first_at_least = [&](int b) {
          return first_key_at_least(k0, k1 + 1, b, [&](float z) { return bin_of(z, mul, offset); });
        };
        const int64_t first = first_at_least(j), next = j + 1 < bins ? first_at_least(j + 1) : k1 + 1;
        if (first >= next) {  // an empty bin: any base works, it is never used
          lo[j] = 0;
          continue;
        }
        lo[j] = cell_of(t, from_key(first));
        ok = cell_of(t, from_key(next - 1)) - lo[j] <= probes;
      }
      if (!ok) continue;
      t.bins = bins;
      t.bin_width = width;
      t.bin_probes = probes;
      t.bin_mul = mul;
      t.bin_offset = int32_t(offset);
      for (int j = 0; j < Tables::kMaxBins; ++j) {
        t.bin_lo[j] = j < bins ? lo[j] : 0;
        t.bin_s1[j] = j < bins ? t.search[t.bin_lo[j] + 1] : nan;
        t.bin_s2[j] = j < bins ? t.search[t.bin_lo[j] + 2] : nan;
      }
      return;
    }
  }
}

// A binary search over thresholds thr[1 .. 2^depths - 1], laid out depth by depth: out[d][m] = thr[(2m + 1) ·
// 2^(depths-1-d)], the probe at depth d when the bits found so far are m; NaN where d >= depths or m >= 2^d.
template <int N>
static void by_depth(const float* thr, int depths, float (&out)[kMaxBits][N]) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int d = 0; d < kMaxBits; ++d)
    for (int m = 0; m < N; ++m)
      out[d][m] = (d < depths && m < (1 << d)) ? thr[(2 * m + 1) << (depths - 1 - d)] : nan;
}

static Tables make_tables(int codebook, int bits) {
  Tables t;
  t.bits = bits;
  t.s = (1 << bits) - 1;
  const std::vector<double> lv = levels_f64(codebook, bits);
  for (int k = 0; k <= t.s; ++k) t.c[k] = static_cast<float>(lv[k]);
  for (int k = t.s + 1; k < 256; ++k) t.c[k] = 0.0f;
  for (int k = 0; k < t.s; ++k) t.inv_gap[k] = static_cast<float>(1.0 / (double(t.c[k + 1]) - double(t.c[k])));
  for (int k = t.s; k < 256; ++k) t.inv_gap[k] = 0.0f;
  t.u16 = true;
  for (int k = 0; k < 256; ++k) {
    t.inv_gap16[k] = t.inv_gap[k] * 65536.0f;  // exact: a power of two
    t.u16 = t.u16 && (k >= t.s || std::isfinite(t.inv_gap16[k]));
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int j = 0; j < 512; ++j) t.search[j] = (j >= 1 && j < t.s) ? t.c[j] : nan;
  by_depth(t.search, bits, t.level);
  const int h = 1 << (bits - 1);
  t.symmetric = t.c[h] > 0.0f;
  for (int k = 0; k <= t.s; ++k) t.symmetric = t.symmetric && t.c[k] == -t.c[t.s - k];
  by_depth(t.c + h - 1, bits - 1, t.half_level);  // thresholds c_h .. c_{s-1}
  make_bins(t);
  t.gpu = make_gpu_bins(t.c, t.inv_gap, t.s);
  return t;
}

const Tables& tables(int codebook, int bits) {
  static Tables all[kNumCodebooks][kMaxBits + 1];
  static std::once_flag once;
  std::call_once(once, [] {
    for (int cb = 0; cb < kNumCodebooks; ++cb)
      for (int b = kMinBits; b <= kMaxBits; ++b) all[cb][b] = make_tables(cb, b);
  });
  return all[codebook][bits];
}

}  // namespace cpu
}  // namespace tnq
