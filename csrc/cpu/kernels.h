// CPU kernel bodies of tnq_kernels: raw pointers in, raw pointers out; no validation, no allocation.
// csrc/ops.cpp is the boundary (checks arguments, allocates tensors, writes headers) and calls these.
// Numerics are those of tnq_kernels/reference.py, bit for bit; every file here is built with -ffp-contract=off.
#pragma once
#include <cstdint>
#include <vector>

#include "../bin_index.h"
#include "../tnq_constants.h"

namespace tnq {
namespace cpu {

// fp32 level table of one (codebook, bits), padded for the branchless search below.
struct Tables {
  int bits = 0;
  int s = 0;              // number of intervals, 2^bits - 1
  float c[256];           // levels c_0 < ... < c_s
  float inv_gap[256];     // fp32(1 / (c_{k+1} - c_k)), k < s
  // inv_gap[k] · 2^16, exact where finite (u16: finite for every k < s), so that the vector encodes test U < p as
  // m + 0.5 < p · 2^16 (why that is exact: encode_full_groups_avx512)
  float inv_gap16[256];
  bool u16 = false;
  // search[j] = c_j for 1 <= j <= s-1, NaN from j = s on: `z >= NaN` is false, so the search never leaves
  // [0, s-1] (that is what makes k the count of *interior* levels <= z), even for z = +inf.
  float search[512];
  // the same search level by level: level[d][m] = search[(2m + 1) · 2^(bits-1-d)], the probe at depth d when the
  // bits of k found so far are m (so k = m · 2^(bits-d) before the probe)
  float level[kMaxBits][128];
  // A symmetric codebook (c_k = -c_{s-k} bit for bit, c_h > 0 for h = 2^(bits-1)) is searched on |z| over its upper
  // half: half_level[d][m] = c[h - 1 + (2m + 1) · 2^(bits-2-d)], the probe at depth d < bits - 1 (the AVX2 encode)
  bool symmetric = false;
  float half_level[kMaxBits][64];
  // O(1) cell index for the AVX-512 encode. The bin of z in [c_0, c_s] is j = floor(z · bin_mul) + bin_offset in
  // [0, bins): the kernel forms it with one fused multiply-add rounded toward -inf, z · bin_mul + (2^23 +
  // bin_offset), whose fp32 bits are those of 2^23 plus j (z · bin_mul is exact in fp64; in [2^23, 2^24) fp32 holds
  // the integers exactly), and its permutes read j from those low bits. Every z of bin j lies in cell bin_lo[j] ...
  // bin_lo[j] + bin_probes, so k = bin_lo[j] + [z >= bin_s1[j]] (+ [z >= bin_s2[j]] with two probes), where
  // bin_s1[j] = search[bin_lo[j] + 1] and bin_s2[j] = search[bin_lo[j] + 2] (NaN past the last interior level).
  // bin_width: the register width of those tables (16, 32 or 64 entries, >= bins). bins = 0 where no layout up to
  // kMaxBins bins and two probes exists (nqsgd's levels crowd towards 0), and for bits > 5; those use the search.
  static constexpr int kMaxBins = 64;
  int bins = 0;
  int bin_width = 0;
  int bin_probes = 0;
  float bin_mul = 0.0f;
  int32_t bin_offset = 0;
  int32_t bin_lo[kMaxBins];
  float bin_s1[kMaxBins];
  float bin_s2[kMaxBins];
  // the CUDA kernels' O(1) cell index (csrc/bin_index.h; nb = 0 where it does not exist)
  GpuBins gpu;
};

// Levels in fp64 exactly as tnq_kernels/codebooks.py computes them (before the single rounding to fp32).
std::vector<double> levels_f64(int codebook, int bits);
double lambert_w0(double x);
const Tables& tables(int codebook, int bits);  // computed once per (codebook, bits), thread-safe

// One source of truth for the payload layout (also exposed to Python for the n > 2^32 tests).
struct Layout {
  int64_t nblocks, codes_offset, payload_bytes, num_words;
};
inline Layout layout(int64_t n, int bits, int64_t block_size) {
  return Layout{num_blocks(n, block_size), codes_offset(n, block_size), payload_bytes(n, bits, block_size),
                int64_t(bits) * ((n + 31) / 32)};
}

// x: n elements of dtype `dtype_id` (DtypeId). Writes scales[num_blocks] and words[bits * ceil(n/32)].
// Returns true when some block is non-finite (the header's flag bit 0). rounding: a RoundingId.
bool compress(const void* x, int dtype_id, int64_t n, int bits, int64_t block_size, int codebook, uint64_t seed,
              int rounding, float* scales, uint32_t* words);

// Test hook for 64-bit indexing: quantize + pack `ngroups` full groups of fp32 x with one scale as if they were
// groups first_group, first_group + 1, ... of a larger tensor (so element indices >= 2^32 can be checked
// without allocating them). words: bits * ngroups.
void encode_at(const float* x, int64_t ngroups, int64_t first_group, float scale, int bits, int codebook,
               uint64_t seed, uint32_t* words);

// The vector loops this process runs: "avx512", "avx2" or "portable" (cpu_has_avx512/cpu_has_avx2: CPU and
// environment), for benchmark records.
const char* simd_path();

// Stage 1 alone: scales[num_blocks] and z[n] (fp32).
void scale_truncate(const void* x, int dtype_id, int64_t n, int bits, int64_t block_size, int codebook,
                    float* scales, float* z);
// Stage 2 alone: codes[n] from z[n].
void quantize(const float* z, int64_t n, int bits, int codebook, uint64_t seed, int rounding, uint8_t* codes);
// Stage 3 alone and its inverse.
void pack(const uint8_t* codes, int64_t n, int bits, uint32_t* words);
void unpack(const uint32_t* words, int64_t n, int bits, uint8_t* codes);

// A validated payload, as pointers into its bytes (which need not be 4-byte aligned).
struct PayloadView {
  const uint8_t* scales;  // nblocks fp32 values
  const uint8_t* words;   // bits * ceil(n/32) uint32 values
  int bits;
  int codebook;
  int64_t block_size;
};

// out[n] (dtype `out_dtype_id`) = sum over w of weights[w] * decode(payloads[w]), accumulated in fp32 in order
// w = 0, 1, ...; the first term initialises the sum; weights may be null (all terms unweighted).
void decompress_sum(const PayloadView* payloads, const float* weights, int64_t num_payloads, int64_t n,
                    int out_dtype_id, void* out);

}  // namespace cpu
}  // namespace tnq
