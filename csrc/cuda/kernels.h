// Launchers of the CUDA kernels of tnq_kernels: the only interface between the binding (csrc/cuda/bindings.cpp,
// compiled by the host C++ compiler with the torch headers) and the kernels (csrc/cuda/*.cu, compiled by nvcc).
// Plain C++ on purpose: raw device pointers, sizes and an opaque stream handle (a cudaStream_t passed as void*),
// so the binding needs neither the CUDA headers nor torch's CUDA libraries, and the kernels need no torch.
// Every launcher validates nothing (the binding did), enqueues its kernels on `stream` and returns nullptr, or
// the CUDA error string of a failed launch.
#pragma once
#include <cstdint>
#include <limits>

#include "../bin_index.h"
#include "../tnq_constants.h"

namespace tnq {
namespace cuda {

// O(1) cell index of the fused encode (csrc/bin_index.h): bin j = gpu_bin(z, bin_mul, bin_add, bin_bias) holds cells lo
// and lo + 1 only, so cell = lo + [z >= t1] with t1 = c_{lo+1}, or NaN when lo + 1 is not an interior level.
constexpr int kCudaMaxBins = 128;  // the tables must fit the 4 KiB of kernel parameters
struct alignas(8) BinEntry {
  uint32_t lo;
  float t1;
};
struct alignas(8) Level16 {
  float c, inv_gap16;  // c_k and fp32(1 / (c_{k+1} - c_k)) · 2^16 (exact: a power of two)
};

// fp32 level table of one (codebook, bits), passed to kernels by value (3.3 KiB of kernel parameters); entries
// past 2^bits are ignored. c: levels c_0 < ... < c_s; inv_gap[k] = fp32(1 / (c_{k+1} - c_k)), k < s.
// bins > 0 (2 <= bits <= 5 and a bin table of at most kCudaMaxBins bins exists): bin[0..bins] and level16[0..s]
// hold the O(1) index; bins = 0: the kernels search c with the runtime bit width instead.
struct LevelTable {
  float c[256];
  float inv_gap[256];
  int bins;
  float bin_mul, bin_add, bin_bias;
  BinEntry bin[kCudaMaxBins + 1];
  Level16 level16[32];
};

// The O(1) index part of a LevelTable whose c and inv_gap are set, from the bins of csrc/bin_index.h: bins = 0 when
// there are none, more than kCudaMaxBins of them, or bits is not a fast width (2..5).
inline void fill_bins(LevelTable& t, const GpuBins& g, int bits) {
  const int s = (1 << bits) - 1;
  const bool ok = bits >= 2 && bits <= 5 && g.nb > 0 && g.nb <= kCudaMaxBins;
  t.bins = ok ? g.nb : 0;
  t.bin_mul = g.mul;
  t.bin_add = g.add;
  t.bin_bias = ok ? gpu_bin_bias(g.nb) : 0.0f;
  for (int j = 0; j <= kCudaMaxBins; ++j) {
    const uint32_t lo = ok && j <= g.nb ? uint32_t(g.lo[j]) : 0u;
    t.bin[j] = BinEntry{lo, int(lo) + 1 < s ? t.c[lo + 1] : std::numeric_limits<float>::quiet_NaN()};
  }
  for (int k = 0; k < 32; ++k) t.level16[k] = Level16{t.c[k], t.inv_gap[k] * 65536.0f};
}

// Header words 0-7 of the payload (flags = 0), built on the host from ints only.
struct HeaderWords {
  uint32_t w[8];
};

// Blocks longer than this are reduced by tiles of kTile elements (partials kernel, then a block-scale kernel)
// before they are encoded; shorter ones are reduced and encoded by one CTA that reads its block twice, the
// second time from L1/L2 (B = 2048 fp32 is 8 KiB per CTA).
constexpr int64_t kFusedMaxBlock = 16384;
constexpr int64_t kTile = 16384;

// Elements one scale block really spans: B = 0 (one scale) and B >= n are one block of n elements. Sizing the
// tiled path by B instead would launch B/kTile tiles per block however small n is (n = 100, B = 2^30: 65,536 CTAs
// and a 512 KiB workspace for 100 elements). The scale is the same: the block holds the same elements.
inline int64_t effective_block_len(int64_t n, int64_t block_size) {
  return (block_size == 0 || block_size > n) ? n : block_size;
}

// Device workspace (bytes) the compress / scale_truncate launchers need for (n, block_size): fp64 partial pairs of
// the tiled path, 0 on the fused path.
int64_t compress_workspace_bytes(int64_t n, int64_t block_size);

// Fused compress: x[n] (dtype_id, 16-byte aligned) -> the whole payload (header, scales, padding, codes).
// payload: 16-byte aligned, payload_bytes(n, bits, block_size) bytes.
// rule: the codebook's ScaleRule (tnq_constants.h scale_rule); rounding: a RoundingId.
const char* compress(const void* x, int dtype_id, int64_t n, int bits, int64_t block_size, int rule,
                     SeedKeys keys, int rounding, const LevelTable& table, const HeaderWords& header, uint8_t* payload,
                     void* workspace, void* stream);

// Job 1 alone: scales[num_blocks(n, block_size)] and z[n] (fp32). x 16-byte aligned.
const char* scale_truncate(const void* x, int dtype_id, int64_t n, int bits, int64_t block_size, int rule,
                           const LevelTable& table, float* scales, float* z, void* workspace, void* stream);

// Job 2 alone: codes[n] (uint8) from z[n] (fp32).
const char* quantize(const float* z, int64_t n, int bits, SeedKeys keys, int rounding, const LevelTable& table,
                     uint8_t* codes, void* stream);

// Job 3 alone and its inverse: codes[n] <-> words[bits * ceil(n/32)] (4-byte aligned).
const char* pack(const uint8_t* codes, int64_t n, int bits, uint32_t* words, void* stream);
const char* unpack(const uint32_t* words, int64_t n, int bits, uint8_t* codes, void* stream);

// Up to kMaxSum payloads of one (bits, codebook) decoded and summed in one launch (kernel parameters, no
// device-side pointer array). Longer or mixed lists are split into runs by the binding; a run after the first
// continues from the fp32 accumulator of the previous one, which keeps the order w = 0, 1, ... exact.
constexpr int kMaxSum = 16;
struct SumRun {
  const uint32_t* words[kMaxSum];  // 4-byte aligned, bits * ceil(n/32) words each
  const float* scales[kMaxSum];    // 4-byte aligned, num_blocks(n, block_size[w]) fp32 each
  int64_t block_size[kMaxSum];     // 0 = one scale for the whole tensor
  float weight[kMaxSum];
  int count;     // payloads in this run, 1..kMaxSum
  int weighted;  // 0: terms are added unweighted (weight ignored)
};

// out[n] (out_dtype_id; fp32 when acc_out is used) = acc_in[n] (if non-null) + sum over the run of
// weight[w] * scale * c[code], in fp32, in order; acc_in may alias out. out 16-byte aligned.
const char* decompress_sum(const SumRun& run, int64_t n, int bits, const LevelTable& table, const float* acc_in,
                           void* out, int out_dtype_id, void* stream);

// True while `stream` is being captured into a CUDA graph (then nothing may synchronise with the host).
bool stream_is_capturing(void* stream);

// The capture path of decompress / decompress_sum: one payload term, its header parsed and validated on the device
// against n and nbytes (an invalid one decodes to NaN without reading past it). out[n] (out_dtype_id) =
// [acc_in +] [weight *] decode(payload); levels: kNumCodebooks x 8 x 256 fp32 on the device (slot
// (codebook * 8 + bits - 1) * 256); payload 4-byte aligned; acc_in may alias out.
const char* decompress_checked(const uint8_t* payload, int64_t nbytes, int64_t n, const float* levels, float weight,
                               int weighted, const float* acc_in, void* out, int out_dtype_id, void* stream);

}  // namespace cuda
}  // namespace tnq
