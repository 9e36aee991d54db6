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
// The cell k of z and p = (z - c_k)·ρ_k for two vectors of z at once, step by step: the search is one chain of
// dependent permutes and compares per vector, and two side by side give the out-of-order core independent work
// within its window (1.0-1.15x faster than one vector after another at b = 2..5 on AMD Zen 3:
// docs/benchmarks-cpu.md).
//
// Binary search level by level: at depth d the probe can only be one of 2^d levels (t.level[d]), indexed by the bits
// m of k found so far, so the first depths are broadcasts and small permutes rather than gathers. The last probe that
// succeeded sits at index k, so c_k comes out of the search by a blend, not a lookup (`ck` starts at c_0, for z below
// every interior level).
template <int D, int BITS>
TNQ_AVX2 inline void search_full(const __m256* z, const Tables& t, __m256i* m, __m256* ck) {
  if constexpr (D < BITS) {
    for (int v = 0; v < 2; ++v) {
      const __m256 probe = lookup<(1 << D)>(t.level[D], m[v]);
      const __m256 ge = _mm256_cmp_ps(z[v], probe, _CMP_GE_OQ);
      ck[v] = _mm256_blendv_ps(ck[v], probe, ge);
      m[v] = _mm256_sub_epi32(_mm256_add_epi32(m[v], m[v]), _mm256_castps_si256(ge));  // 2m + 1 where z >= probe
    }
    search_full<D + 1, BITS>(z, t, m, ck);
  }
}

template <int BITS, bool U16>
TNQ_AVX2 inline void cells_full(const __m256* z, const Tables& t, __m256i* k, __m256* p) {
  __m256i m[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
  __m256 ck[2] = {_mm256_set1_ps(t.c[0]), _mm256_set1_ps(t.c[0])};
  search_full<0, BITS>(z, t, m, ck);
  for (int v = 0; v < 2; ++v) {
    k[v] = m[v];
    p[v] = _mm256_mul_ps(_mm256_sub_ps(z[v], ck[v]), lookup<(1 << BITS) - 1>(U16 ? t.inv_gap16 : t.inv_gap, m[v]));
  }
}

// The same for a symmetric codebook (t.symmetric: c_{s-k} = -c_k), searched on |z| over the upper half of the levels:
// BITS - 1 depths with tables of up to 2^(BITS-2) entries (t.half_level), and a gap table of 2^(BITS-1), instead of
// BITS depths with up to 2^(BITS-1) and a gap table of 2^BITS - 1. Gives k - (h - 1), h = 2^(BITS-1), for the caller
// to add after narrowing, and the reference's code:
// - a1 holds the bits of |z| plus 1, so one integer compare with a probe's bits (both >= 0) is |z| >= probe, and m
//   ends as j, the half-cell of |z|: k = h - 1 + j for z >= 0 and h - 1 - j for z < 0;
// - the bound taken is the lower end of |z|'s half-cell for z >= 0 and the upper end for z < 0 (the blend's mask is
//   ge with its sign bit flipped by z's: blendv reads only that bit), which is |c_k| either way: c_k is the bound
//   with z's sign, z - c_k the reference's subtraction itself, and ρ_{h-1+j} = ρ_{h-1-j} (the gaps are symmetric
//   too), so p is the reference's p bit for bit;
// - but for z < 0 on an interior level, z = c_i with 0 < i < h: the reference takes k = i and p = 0, this search
//   k = i - 1 and p = (c_i - c_{i-1})·ρ_{i-1} >= (1 - 2^-24)^3 (two roundings of the gap and one of the product),
//   above every U (<= 1 - 2^-17). Both give code i. (tests/test_cpu_backend.py puts z on every level of every
//   codebook.)
template <int D, int HB>
TNQ_AVX2 inline void search_half(const __m256* z, const __m256i* a1, const Tables& t, __m256i* m, __m256* bound) {
  if constexpr (D < HB) {
    for (int v = 0; v < 2; ++v) {
      const __m256 probe = lookup<(1 << D)>(t.half_level[D], m[v]);
      const __m256i ge = _mm256_cmpgt_epi32(a1[v], _mm256_castps_si256(probe));
      bound[v] = _mm256_blendv_ps(bound[v], probe, _mm256_xor_ps(_mm256_castsi256_ps(ge), z[v]));  // ge xor sign
      m[v] = _mm256_sub_epi32(_mm256_add_epi32(m[v], m[v]), ge);
    }
    search_half<D + 1, HB>(z, a1, t, m, bound);
  }
}

template <int BITS, bool U16>
TNQ_AVX2 inline void cells_half(const __m256* z, const Tables& t, __m256i* k, __m256* p) {
  constexpr int H = 1 << (BITS - 1);
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(int(0x80000000u)));
  __m256i a1[2], m[2];
  __m256 bound[2];
  for (int v = 0; v < 2; ++v) {
    a1[v] = _mm256_add_epi32(_mm256_castps_si256(_mm256_andnot_ps(sign, z[v])), _mm256_set1_epi32(1));
    bound[v] = _mm256_blendv_ps(_mm256_set1_ps(t.c[H - 1]), _mm256_set1_ps(t.c[2 * H - 1]), z[v]);  // by z's sign
    m[v] = _mm256_setzero_si256();
  }
  search_half<0, BITS - 1>(z, a1, t, m, bound);
  for (int v = 0; v < 2; ++v) {
    const __m256 ck = _mm256_or_ps(bound[v], _mm256_and_ps(z[v], sign));
    p[v] = _mm256_mul_ps(_mm256_sub_ps(z[v], ck), lookup<H>((U16 ? t.inv_gap16 : t.inv_gap) + H - 1, m[v]));
    k[v] = _mm256_sign_epi32(m[v], _mm256_castps_si256(z[v]));  // j where z > 0, -j where z < 0 (0 = j at z = ±0)
  }
}

// Full groups [g0, g1) of one block with a finite scale and one pair key; same operations as round_code/truncate,
// lane-wise (a zero scale multiplies by 0, as in encode_full_groups_avx512). x and words point at group g0's first
// element and first word; g0 is the global group index (for the hash). With U16 (t.u16), U < p is tested as
// m + 0.5 < p·2^16 with t.inv_gap16 (why that is exact: encode_full_groups_avx512); without, as U < p itself. HALF:
// the cells come from cells_half (symmetric codebooks at BITS >= 5, where it is faster; docs/benchmarks-cpu.md). The
// group's 32 codes are narrowed to bytes so each bit plane is one shift and one byte movemask (pack_group's method).
//
// Vector v holds elements [0..3, 8..11] (v = 0), [4..7, 12..15] (v = 1), then the same + 16. Each element's 16 bits of
// the hash then sit in its own 128-bit lane, so m is an in-lane unpack rather than a lane-crossing widen, bf16 loads
// are unpacks too, and the two packs return element order but for one 64-bit permute. (AVX2's lane-crossing
// shuffles issue half as often as in-lane ones on AMD Zen 3: docs/benchmarks-cpu.md.) no-tree-slp-vectorize: GCC
// would otherwise gather the bit-plane words into one vector store through vmovd/vpinsrd (as in the AVX-512 loop).
template <int DT, int BITS, bool NEAREST, bool U16, bool HALF>
TNQ_AVX2 __attribute__((optimize("no-tree-slp-vectorize"))) void encode_full_groups_avx2(
    const typename Src<DT>::T* x, int64_t g0, int64_t g1, float scale, BlockMode mode, const Tables& t,
    uint32_t pair_key, int64_t ahead, uint32_t* words) {
  constexpr float kU = U16 ? 1.0f : 1.0f / 65536.0f;  // U·2^16 · kU: U·2^16 or U, exact
  const __m256 vr = _mm256_set1_ps(mode == kUsable ? inverse_scale(scale) : 0.0f);
  const __m256 lo = _mm256_set1_ps(t.c[0]), hi = _mm256_set1_ps(t.c[t.s]);
  const __m256 half = _mm256_set1_ps(0.5f);
  const __m256i key = _mm256_set1_epi32(int(pair_key)), eight = _mm256_set1_epi32(8), sixteen = _mm256_set1_epi32(16);
  // the pair index of each lane, advanced by 16 per group (mod 2^32: a key run never crosses a change of j_hi)
  __m256i j = _mm256_add_epi32(_mm256_set1_epi32(int(uint32_t(uint64_t(g0 * kGroup) >> 1))),
                               _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (int64_t g = g0; g < g1; ++g, x += kGroup, words += BITS) {
    prefetch_group<DT>(x + ahead);
    // the 16 pairs of the group in two hashes of 8 lanes: as 16-bit words, h[0] holds m of elements 0..15 in
    // order (pair j's low half is element 2j), h[1] elements 16..31: elements 0..7 in the low 128-bit lane
    const __m256i h[2] = {fmix32_x8(_mm256_xor_si256(j, key)),
                          fmix32_x8(_mm256_xor_si256(_mm256_add_epi32(j, eight), key))};
    j = _mm256_add_epi32(j, sixteen);
    __m256 z[4];
    for (int hh = 0; hh < 2; ++hh) {
      if constexpr (DT == kBFloat16) {  // bf16 is the top half of an fp32
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 16 * hh));
        z[2 * hh] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), raw));
        z[2 * hh + 1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), raw));
      } else if constexpr (DT == kFloat32) {
        const float* f = reinterpret_cast<const float*>(x) + 16 * hh;
        z[2 * hh] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(f)), _mm_loadu_ps(f + 8), 1);
        z[2 * hh + 1] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(f + 4)), _mm_loadu_ps(f + 12), 1);
      } else {
        const __m256 a = load8<DT>(x + 16 * hh), b = load8<DT>(x + 16 * hh + 8);
        z[2 * hh] = _mm256_permute2f128_ps(a, b, 0x20);
        z[2 * hh + 1] = _mm256_permute2f128_ps(a, b, 0x31);
      }
    }
    for (int v = 0; v < 4; ++v) z[v] = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(z[v], vr), lo), hi);
    __m256i code[4];
    __m256 p[4];
    for (int v = 0; v < 4; v += 2) {
      if constexpr (HALF)
        cells_half<BITS, U16>(z + v, t, code + v, p + v);
      else
        cells_full<BITS, U16>(z + v, t, code + v, p + v);
    }
    for (int v = 0; v < 4; ++v) {
      __m256 u;
      if constexpr (NEAREST) {
        u = _mm256_set1_ps(kNearestU * 65536.0f * kU);
      } else {
        const __m256i m = v & 1 ? _mm256_unpackhi_epi16(h[v >> 1], _mm256_setzero_si256())
                                : _mm256_unpacklo_epi16(h[v >> 1], _mm256_setzero_si256());
        u = _mm256_add_ps(_mm256_cvtepi32_ps(m), half);
        if constexpr (!U16) u = _mm256_mul_ps(u, _mm256_set1_ps(kU));
      }
      const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(u, p[v], _CMP_LT_OQ));
      code[v] = _mm256_sub_epi32(code[v], up);  // up is -1 where the value rounds up
    }
    // packs_epi32 of [0..3, 8..11] and [4..7, 12..15] gives words 0..7 | 8..15 (signed: cells_half's codes are
    // offset by -(h - 1), added here), packus_epi16 then bytes [0..7, 16..23 | 8..15, 24..31], put in order by one
    // 64-bit permute
    __m256i c16[2] = {_mm256_packs_epi32(code[0], code[1]), _mm256_packs_epi32(code[2], code[3])};
    if constexpr (HALF) {
      const __m256i offset = _mm256_set1_epi16(short((1 << (BITS - 1)) - 1));
      c16[0] = _mm256_add_epi16(c16[0], offset);
      c16[1] = _mm256_add_epi16(c16[1], offset);
    }
    const __m256i c8 = _mm256_permute4x64_epi64(_mm256_packus_epi16(c16[0], c16[1]), 0xD8);
#pragma GCC unroll 8
    for (int b = 0; b < BITS; ++b) words[b] = uint32_t(_mm256_movemask_epi8(_mm256_slli_epi16(c8, 7 - b)));
  }
}

// encode_full_groups_avx2 for the tables of t: t.inv_gap16 where it is finite (t.u16; it is not only where a gap is
// below 2^-112, nqsgd and nuqsgd_l2 at 8 bits, and there the loop tests U < p itself), the half search for symmetric
// codebooks from 5 bits on.
template <int DT, int BITS, bool NEAREST>
TNQ_AVX2 void encode_avx2(const typename Src<DT>::T* x, int64_t g0, int64_t g1, float scale, BlockMode mode,
                          const Tables& t, uint32_t pair_key, int64_t ahead, uint32_t* words) {
  constexpr bool kHalfPays = BITS >= 5;
  const bool half = kHalfPays && t.symmetric;
  if (t.u16 && half)
    encode_full_groups_avx2<DT, BITS, NEAREST, true, kHalfPays>(x, g0, g1, scale, mode, t, pair_key, ahead, words);
  else if (t.u16)
    encode_full_groups_avx2<DT, BITS, NEAREST, true, false>(x, g0, g1, scale, mode, t, pair_key, ahead, words);
  else if (half)
    encode_full_groups_avx2<DT, BITS, NEAREST, false, kHalfPays>(x, g0, g1, scale, mode, t, pair_key, ahead, words);
  else
    encode_full_groups_avx2<DT, BITS, NEAREST, false, false>(x, g0, g1, scale, mode, t, pair_key, ahead, words);
}
#endif  // TNQ_HAVE_AVX2_PATH

#if TNQ_HAVE_AVX512_PATH
// A table of N = 16, 32 or 64 4-byte entries held in registers, read by permutes (no memory access): 16 entries in
// one register (a one-source permute, which overwrites no operand, so it needs no register copies), 32 in two (a
// two-source permute), 64 in four (two two-source permutes and a blend on bit 5 of the index, `upper`). A permute
// reads only the low 4 or 5 bits of each index.
template <int N>
struct RegTable {
  static_assert(N == 16 || N == 32 || N == 64, "RegTable holds 16, 32 or 64 entries");
  __m512i r[N / 16];
  TNQ_AVX512 explicit RegTable(const void* p) {
    for (int i = 0; i < N / 16; ++i) r[i] = _mm512_loadu_si512(static_cast<const char*>(p) + 64 * i);
  }
  TNQ_AVX512 __m512i operator()(__m512i idx, __mmask16 upper = 0) const {
    if constexpr (N == 16) {
      return _mm512_permutexvar_epi32(idx, r[0]);
    } else if constexpr (N == 32) {
      return _mm512_permutex2var_epi32(r[0], idx, r[1]);
    } else {
      return _mm512_mask_blend_epi32(upper, _mm512_permutex2var_epi32(r[0], idx, r[1]),
                                     _mm512_permutex2var_epi32(r[2], idx, r[3]));
    }
  }
  TNQ_AVX512 __m512 ps(__m512i idx, __mmask16 upper = 0) const { return _mm512_castsi512_ps((*this)(idx, upper)); }
};

// Full groups [g0, g1) of one block with a finite scale (t.bins > 0, BITS <= 5) and one pair key: the same z, k,
// p and U as truncate/round_code, 16 lanes at a time. k comes from the O(1) bin index of Tables (kernels.h): the
// bin is one fused multiply-add rounded down, read by the permutes from its fp32 bits, and PROBES compares fix it
// up (WIDTH: the bin tables' register width, t.bin_width); every table lookup is a register permute; one 16-lane
// hash serves the group's 32 elements; the group's codes are narrowed to 16 bits so each bit plane is one mask
// test.
//
// Two rewrites that keep every code (tests compare the bytes with the reference):
// - a zero scale multiplies by r = 0 instead of branching per vector: the block is finite (non-finite blocks never
//   get here), so g·0 = ±0, and −0 and +0 clamp, bin, compare and subtract alike;
// - U < p is tested as m + 0.5 < p' with p' = (z − c_k)·(ρ_k·2^16): ρ_k·2^16 is exact and finite (make_bins), so
//   p' = p·2^16 exactly unless (z − c_k)·ρ_k < 2^-126, where both p and p'·2^-16 are far below U ≥ 2^-17.
// (no-tree-slp-vectorize: GCC would otherwise gather the BITS mask words through general registers into one vector
// store, 2-3 instructions per word instead of one kmovd to memory.)
template <int DT, int BITS, int WIDTH, int PROBES, bool NEAREST>
TNQ_AVX512 __attribute__((optimize("no-tree-slp-vectorize"))) void encode_full_groups_avx512(
    const typename Src<DT>::T* x, int64_t g0, int64_t g1, float scale, BlockMode mode, const Tables& t,
    uint32_t pair_key, int64_t ahead, uint32_t* words) {
  constexpr int S = (1 << BITS) - 1;
  const __m512 vr = _mm512_set1_ps(mode == kUsable ? inverse_scale(scale) : 0.0f);
  const __m512 lo = _mm512_set1_ps(t.c[0]), hi = _mm512_set1_ps(t.c[S]);
  const __m512 bin_mul = _mm512_set1_ps(t.bin_mul);
  const __m512 bin_add = _mm512_set1_ps(8388608.0f + float(t.bin_offset));  // 2^23 + offset, exact
  const __m512i one = _mm512_set1_epi32(1), bit5 = _mm512_set1_epi32(32), one16 = _mm512_set1_epi16(1);
  const __m512 half = _mm512_set1_ps(0.5f);
  // word 2i of the result takes word 16 + i of the hash (the m of element 16 + i), odd words are zeroed
  const __m512i upper_m = _mm512_set_epi16(0, 31, 0, 30, 0, 29, 0, 28, 0, 27, 0, 26, 0, 25, 0, 24, 0, 23, 0, 22, 0,
                                           21, 0, 20, 0, 19, 0, 18, 0, 17, 0, 16);
  // the low word of each cell of kv[0] (elements 0..15), then of kv[1] (16..31)
  const __m512i low_words = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30, 28,
                                             26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i key = _mm512_set1_epi32(int(pair_key));
  // every table in registers for the whole block. The second probe's table holds NaN past the last interior level,
  // where the compare never succeeds, so k stays in [0, s - 1] without a clamp.
  using Levels = RegTable<(BITS <= 4) ? 16 : 32>;
  const RegTable<WIDTH> bin_lo(t.bin_lo), bin_s1(t.bin_s1), bin_s2(t.bin_s2);
  const Levels levels(t.c);
  const Levels inv_gap(t.inv_gap16);
  // the pair index of each lane: j_lo of the group's pairs, advanced by 16 per group (mod 2^32: a key run never
  // crosses a change of j_hi)
  __m512i j = _mm512_add_epi32(_mm512_set1_epi32(int(uint32_t(uint64_t(g0 * kGroup) >> 1))),
                               _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const __m512i sixteen = _mm512_set1_epi32(16);
  for (int64_t g = g0; g < g1; ++g, x += kGroup, words += BITS) {
    // one hash of 16 lanes for the group's 16 pairs: as 16-bit words it holds m of elements 0..31 in order
    // (pair j's low half is element 2j)
    const __m512i h = fmix32_x16(_mm512_xor_si512(j, key));
    j = _mm512_add_epi32(j, sixteen);
    prefetch_group<DT>(x + ahead);
    __m512 g16[2];
    load32<DT>(x, g16);
    __m512i kv[2];
    __mmask16 up[2];
#pragma GCC unroll 2
    for (int v = 0; v < 2; ++v) {
      const __m512 z = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(g16[v], vr), lo), hi);
      const __m512i bin = _mm512_castps_si512(
          _mm512_fmadd_round_ps(z, bin_mul, bin_add, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
      const __mmask16 upper = WIDTH == 64 ? _mm512_test_epi32_mask(bin, bit5) : __mmask16(0);
      __m512i k = bin_lo(bin, upper);
      if constexpr (PROBES == 2)
        k = _mm512_mask_add_epi32(k, _mm512_cmp_ps_mask(z, bin_s2.ps(bin, upper), _CMP_GE_OQ), k, one);
      k = _mm512_mask_add_epi32(k, _mm512_cmp_ps_mask(z, bin_s1.ps(bin, upper), _CMP_GE_OQ), k, one);
      const __m512 p16 = _mm512_mul_ps(_mm512_sub_ps(z, levels.ps(k)), inv_gap.ps(k));
      const __m512i m = v ? _mm512_maskz_permutexvar_epi16(0x55555555u, upper_m, h)
                          : _mm512_cvtepu16_epi32(_mm512_castsi512_si256(h));
      const __m512 u16 = NEAREST ? _mm512_set1_ps(kNearestU * 65536.0f)  // U·2^16, exact
                                 : _mm512_add_ps(_mm512_cvtepi32_ps(m), half);
      up[v] = _mm512_cmp_ps_mask(u16, p16, _CMP_LT_OQ);
      kv[v] = k;
    }
    // code = k + [U < p], added once to the group's 32 cells narrowed to 16 bits (one masked add, which GCC does
    // not need to copy k for, as it does for a merge-masked add to a k that is still read)
    __m512i c16 = _mm512_permutex2var_epi16(kv[0], low_words, kv[1]);
    c16 = _mm512_mask_add_epi16(c16, _mm512_kunpackw(up[1], up[0]), c16, one16);
#pragma GCC unroll 8
    for (int b = 0; b < BITS; ++b)
      _store_mask32(reinterpret_cast<__mmask32*>(words + b),
                    _mm512_test_epi16_mask(c16, _mm512_set1_epi16(short(1 << b))));
  }
}

// The AVX-512 encode for the bin layout of t (t.bins > 0).
template <int DT, int BITS, bool NEAREST>
TNQ_AVX512 void encode_full_groups_binned(const typename Src<DT>::T* x, int64_t g0, int64_t g1, float scale,
                                          BlockMode mode, const Tables& t, uint32_t pair_key, int64_t ahead,
                                          uint32_t* words) {
  if (t.bin_width == 16 && t.bin_probes == 1)
    encode_full_groups_avx512<DT, BITS, 16, 1, NEAREST>(x, g0, g1, scale, mode, t, pair_key, ahead, words);
  else if (t.bin_width == 16)
    encode_full_groups_avx512<DT, BITS, 16, 2, NEAREST>(x, g0, g1, scale, mode, t, pair_key, ahead, words);
  else if (t.bin_width == 32)
    encode_full_groups_avx512<DT, BITS, 32, 2, NEAREST>(x, g0, g1, scale, mode, t, pair_key, ahead, words);
  else
    encode_full_groups_avx512<DT, BITS, 64, 2, NEAREST>(x, g0, g1, scale, mode, t, pair_key, ahead, words);
}
#endif  // TNQ_HAVE_AVX512_PATH

// encode_groups for a run of groups that shares one pair key (mode: usable or zero scale). NEAREST: U = kNearestU
// (rounding to the nearest level; the hashes are dead code then).
template <int DT, int BITS, bool NEAREST>
TNQ_CLONES void encode_key_run(const typename Src<DT>::T* x, int64_t n, int64_t g0, int64_t g1, float scale,
                               BlockMode mode, const Tables& t, uint32_t pair_key, int64_t ahead, uint32_t* words) {
#if TNQ_HAVE_AVX2_PATH
  if (cpu_has_avx2()) {
    const int64_t full_end = std::min(g1, n / kGroup);  // groups holding 32 real elements
    if (full_end > g0) {
#if TNQ_HAVE_AVX512_PATH
      if constexpr (BITS <= 5) {
        if (t.bins > 0 && cpu_has_avx512())
          encode_full_groups_binned<DT, BITS, NEAREST>(x, g0, full_end, scale, mode, t, pair_key, ahead, words);
        else
          encode_avx2<DT, BITS, NEAREST>(x, g0, full_end, scale, mode, t, pair_key, ahead, words);
      } else
#endif
      encode_avx2<DT, BITS, NEAREST>(x, g0, full_end, scale, mode, t, pair_key, ahead, words);
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
    const uint32_t j0 = uint32_t(uint64_t(i0) >> 1);
    for (int j = 0; j < kGroup / 2; ++j) {
      const uint32_t h = pair_hash(pair_key, j0 + uint32_t(j));
      code[2 * j] = uint8_t(round_code<BITS, NEAREST>(z[2 * j], t, h & 0xFFFFu));
      code[2 * j + 1] = uint8_t(round_code<BITS, NEAREST>(z[2 * j + 1], t, h >> 16));
    }
    for (int64_t j = cnt; j < kGroup; ++j) code[j] = 0;  // tail codes are zero on the wire
    pack_group<BITS>(code, words + (g - g0) * BITS);
  }
}

// Quantize + pack groups [g0, g1), all in one block of scale `scale`; x and words point at group g0's first
// element and first word, g0 is the global group index (the hash is keyed by global element indices). Elements
// at global index >= n get code 0. ahead: the vector loops prefetch the input `ahead` elements past each group they
// encode (0: nothing new).
template <int DT, int BITS>
void encode_groups(const typename Src<DT>::T* x, int64_t n, int64_t g0, int64_t g1, float scale, const Tables& t,
                   SeedKeys keys, bool nearest, uint32_t* words, int64_t ahead = 0) {
  const BlockMode mode = block_mode(scale);
  if (mode == kNonFinite) {  // z = c_0 gives k = 0, p = 0: every code is 0
    std::fill(words, words + (g1 - g0) * BITS, 0u);
    return;
  }
  // one pair key per run of groups; a run ends where j_hi changes (a block straddles that only past 2^33 elements)
  for (int64_t gs = g0; gs < g1;) {
    const int64_t ge = std::min(g1, (gs / kGroupsPerKey + 1) * kGroupsPerKey);
    const uint32_t key = tnq::pair_key(keys, uint32_t(uint64_t(gs) / kGroupsPerKey));
    if (nearest)
      encode_key_run<DT, BITS, true>(x + (gs - g0) * kGroup, n, gs, ge, scale, mode, t, key, ahead,
                                     words + (gs - g0) * BITS);
    else
      encode_key_run<DT, BITS, false>(x + (gs - g0) * kGroup, n, gs, ge, scale, mode, t, key, ahead,
                                      words + (gs - g0) * BITS);
    gs = ge;
  }
}

template <int DT, int BITS>
bool compress_impl(const typename Src<DT>::T* x, int64_t n, int64_t block_size, int codebook, uint64_t seed,
                   bool nearest, float* scales, uint32_t* words) {
  const Tables& t = tables(codebook, BITS);
  const SeedKeys keys = seed_keys(seed);
  const int rule = scale_rule(codebook);
  const int64_t ngroups = (n + kGroup - 1) / kGroup;
  if (block_size == 0) {
    const float scale = whole_tensor_scale<DT>(x, n, rule);
    scales[0] = scale;
    at::parallel_for(0, ngroups, 2048, [&](int64_t g0, int64_t g1) {
      encode_groups<DT, BITS>(x + g0 * kGroup, n, g0, g1, scale, t, keys, nearest, words + g0 * BITS);
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
      // Block b + 1 is prefetched while block b is encoded: its scale loop then reads from cache instead of
      // waiting on memory with no arithmetic to overlap (measured: docs/benchmarks-cpu.md). Only a whole next block
      // of this thread's range.
      const int64_t ahead = b + 1 < b1 && (b + 2) * block_size <= n ? block_size : 0;
      encode_groups<DT, BITS>(x + i0, n, b * gpb, std::min(ngroups, (b + 1) * gpb), scale, t, keys, nearest,
                              words + b * gpb * BITS, ahead);
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
                                                          tables(codebook, BITS), keys, false, words));
}

bool compress(const void* x, int dtype_id, int64_t n, int bits, int64_t block_size, int codebook, uint64_t seed,
              int rounding, float* scales, uint32_t* words) {
  if (n == 0) {
    if (block_size == 0) scales[0] = 0.0f;  // B = 0 keeps its one (zero) scale; B > 0 has no blocks at all
    return false;
  }
  bool bad = false;
  TNQ_DISPATCH_DTYPE(dtype_id, TNQ_DISPATCH_BITS(bits, {
    bad = compress_impl<DT, BITS>(static_cast<const typename Src<DT>::T*>(x), n, block_size, codebook, seed,
                                  rounding == kNearest, scales, words);
  }));
  return bad;
}

}  // namespace cpu
}  // namespace tnq
