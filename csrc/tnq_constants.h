// Constants shared by every C++/CUDA backend of tnq_kernels. Python's copies live in tnq_kernels/format.py,
// tnq_kernels/codebooks.py and tnq_kernels/rng.py; tests/test_constants.py checks the two agree (STYLE rule 4).
// Plain C++ with constexpr only, so it compiles under both g++ and nvcc (host and device).
#pragma once
#include <cstdint>

namespace tnq {

// ---- wire format v1 (docs/format.md) ----
constexpr uint8_t kMagic[4] = {'T', 'N', 'Q', 'K'};
constexpr uint8_t kFormatVersion = 1;
constexpr int64_t kHeaderBytes = 32;
constexpr int64_t kCodesAlign = 16;
constexpr uint32_t kFlagNonFinite = 1u;
constexpr int kMinBits = 1;
constexpr int kMaxBits = 8;
constexpr int64_t kMaxBlockSize = int64_t(1) << 30;
// header field byte offsets
constexpr int kOffVersion = 4, kOffBits = 5, kOffCodebook = 6, kOffDtype = 7, kOffBlockSize = 8, kOffFlags = 12,
              kOffNumel = 16, kOffReserved = 24;

// ---- codebook ids (byte 6) and source dtype ids (byte 7) ----
// 6 + j: rtnq{2^j}, the bias-aware TNQ for N = 2^j clients (tnq_kernels/codebooks.py RTNQ_CLIENTS), j < kNumRtnq;
// then tnq_max (TNQ's level density over [-max|g|, max|g|], for error feedback)
enum CodebookId : int { kTnq = 0, kTqsgd = 1, kNqsgd = 2, kQsgd = 3, kQsgdL2 = 4, kNuqsgdL2 = 5, kRtnq1 = 6 };
constexpr int kNumRtnq = 9;
constexpr int kTnqMax = kRtnq1 + kNumRtnq;
constexpr int kNumCodebooks = kTnqMax + 1;
constexpr bool is_rtnq(int codebook) { return codebook >= kRtnq1 && codebook < kRtnq1 + kNumRtnq; }
enum DtypeId : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
// the client count N of an rtnq id (its levels are tnq's with a → a/√N)
constexpr int rtnq_clients(int codebook) { return 1 << (codebook - kRtnq1); }
// scale rules (codebooks.py SCALE_*): mean|g| (tnq, tqsgd), max|g| (nqsgd, qsgd, tnq_max), ‖g‖₂ = sqrt(fp64 Σg²)
// (qsgd_l2, nuqsgd_l2), Σg² / (2·Σ|g|) in fp64, 0 when Σ|g| = 0 (rtnq*); each rounded once to fp32
enum ScaleRule : int { kScaleMeanAbs = 0, kScaleMaxAbs = 1, kScaleL2 = 2, kScaleM2M1 = 3 };
constexpr int scale_rule(int codebook) {
  return codebook == kNqsgd || codebook == kQsgd || codebook == kTnqMax ? kScaleMaxAbs
         : codebook == kQsgdL2 || codebook == kNuqsgdL2                  ? kScaleL2
         : is_rtnq(codebook)                                              ? kScaleM2M1
                                                          : kScaleMeanAbs;
}
constexpr bool scale_is_max(int codebook) { return scale_rule(codebook) == kScaleMaxAbs; }

// ---- codebook math ----
constexpr double kTnqA = 3.674234614174767;  // 3·√6/2
constexpr double kTnqMaxAlpha = 8.202078771817717;  // tnq_max's range: H_2048 (codebooks.py TNQ_MAX_ALPHA)

// ---- counter-based RNG, SPEC v1.2 (docs/RNG.md, tnq_kernels/rng.py) ----
constexpr uint32_t kFmixC1 = 0x85EBCA6Bu;
constexpr uint32_t kFmixC2 = 0xC2B2AE35u;
constexpr uint32_t kSeedSaltLo = 0x9E3779B9u;
constexpr uint32_t kSeedSaltHi = 0x7F4A7C15u;
constexpr int kUniformBits = 16;

// ---- encode rounding modes (the ops' `rounding` argument; tnq_kernels/rng.py ROUNDING_IDS) ----
// Both give code = k + [U < p]: kStochastic takes U from the hash below, kNearest the constant kNearestU for every
// element (the nearest level, ties down; no hash is computed, so the seed does not change the codes).
enum RoundingId : int { kStochastic = 0, kNearest = 1 };
constexpr int kNumRoundings = 2;
constexpr float kNearestU = 0.5f;

#if defined(__CUDACC__)
#define TNQ_HD __host__ __device__ __forceinline__
#else
#define TNQ_HD inline
#endif

TNQ_HD uint32_t fmix32(uint32_t x) {
  x ^= x >> 16;
  x *= kFmixC1;
  x ^= x >> 13;
  x *= kFmixC2;
  x ^= x >> 16;
  return x;
}

struct SeedKeys {
  uint32_t key0, key1;
};

TNQ_HD SeedKeys seed_keys(uint64_t seed) {
  return SeedKeys{fmix32(uint32_t(seed) ^ kSeedSaltLo), fmix32(uint32_t(seed >> 32) ^ kSeedSaltHi)};
}

// K: the key of the pairs j whose high half is j_hi = j >> 32, i.e. of elements [2^33·j_hi, 2^33·(j_hi + 1)).
// Kernels compute it once per block (or group) and recompute it only where the element index crosses 2^33.
TNQ_HD uint32_t pair_key(SeedKeys k, uint32_t j_hi) { return fmix32(k.key0 ^ fmix32(j_hi ^ k.key1)); }

// H(seed, j) from the pair key: the 32 random bits of elements 2j (low half) and 2j + 1 (high half).
TNQ_HD uint32_t pair_hash(uint32_t key, uint32_t j_lo) { return fmix32(j_lo ^ key); }

TNQ_HD uint32_t hash_pair(SeedKeys k, uint64_t j) { return pair_hash(pair_key(k, uint32_t(j >> 32)), uint32_t(j)); }

// The 16 random bits m of element i (the full definition, for stage ops and tails; hot loops hash pairs).
TNQ_HD uint32_t bits16(SeedKeys k, uint64_t i) { return (hash_pair(k, i >> 1) >> (16 * (i & 1))) & 0xFFFFu; }

// U · 2^16 = m + 0.5 (exact), for loops that compare it with p · 2^16 (a table of inverse gaps times 2^16).
TNQ_HD float uniform16_x65536(uint32_t m) { return float(m) + 0.5f; }
// U = (m + 0.5) · 2^-16 in (0, 1): 17 significant bits, exact in fp32 (both operations are exact).
TNQ_HD float uniform16(uint32_t m) { return uniform16_x65536(m) * (1.0f / 65536.0f); }

TNQ_HD int64_t num_blocks(int64_t n, int64_t block_size) {
  return block_size == 0 ? 1 : (n + block_size - 1) / block_size;
}
TNQ_HD int64_t codes_offset(int64_t n, int64_t block_size) {
  return kHeaderBytes + (4 * num_blocks(n, block_size) + kCodesAlign - 1) / kCodesAlign * kCodesAlign;
}
TNQ_HD int64_t payload_bytes(int64_t n, int bits, int64_t block_size) {
  return codes_offset(n, block_size) + int64_t(4) * bits * ((n + 31) / 32);
}

}  // namespace tnq
