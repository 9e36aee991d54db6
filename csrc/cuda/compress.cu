// Fused compress (docs/architecture.md hot path): header, then per block its scale and its packed codes, in one pass over the
// input for blocks up to kFusedMaxBlock elements (see blocks.cuh for the tiled path of longer blocks and B = 0).
#include "blocks.cuh"

namespace tnq {
namespace cuda {
namespace dev {

// Header words 0-7 (flags = 0) and zero words [zero_lo, zero_hi) (scale padding; at most 4 words). Launched
// before the block kernels, which set the flags word to 1 (a plain store: every writer stores the same value)
// when their block is non-finite; the stream orders the two, so no atomics are needed.
__global__ void header_kernel(uint32_t* __restrict__ out, HeaderWords h, int64_t zero_lo, int64_t zero_hi) {
  const int t = threadIdx.x;
  if (t < 8) out[t] = h.w[t];
  if (zero_lo + t < zero_hi) out[zero_lo + t] = 0u;
}

}  // namespace dev

int64_t compress_workspace_bytes(int64_t n, int64_t block_size) {
  const int64_t block_len = effective_block_len(n, block_size);
  if (n == 0 || block_len <= kFusedMaxBlock) return 0;
  return 2 * int64_t(sizeof(double)) * num_blocks(n, block_size) * ((block_len + kTile - 1) / kTile);
}

const char* compress(const void* x, int dtype_id, int64_t n, int bits, int64_t block_size, int rule,
                     SeedKeys keys, int rounding, const LevelTable& table, const HeaderWords& header, uint8_t* payload,
                     void* workspace, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t nblocks = num_blocks(n, block_size);
  const int64_t off = codes_offset(n, block_size);
  uint32_t* words32 = reinterpret_cast<uint32_t*>(payload);
  // with n = 0 and B = 0 the one scale (of an empty tensor) is 0, written here with the padding
  dev::header_kernel<<<1, 32, 0, s>>>(words32, header, kHeaderBytes / 4 + (n > 0 ? nblocks : 0), off / 4);
  if (const char* err = launch_status()) return err;
  return run_blocks<false>(x, dtype_id, n, bits, block_size, rule, keys, rounding, table,
                           reinterpret_cast<float*>(payload + kHeaderBytes), words32 + kOffFlags / 4,
                           reinterpret_cast<uint32_t*>(payload + off), nullptr, workspace, s);
}

}  // namespace cuda
}  // namespace tnq
