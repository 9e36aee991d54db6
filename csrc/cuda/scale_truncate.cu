// Job 1 alone (docs/architecture.md): per-block scales and z = clamp(x / scale, c_0, c_s), with the block kernels of
// compress (blocks.cuh) writing z instead of codes, so the two ops cannot disagree on a scale.
#include "blocks.cuh"

namespace tnq {
namespace cuda {

const char* scale_truncate(const void* x, int dtype_id, int64_t n, int bits, int64_t block_size, int rule,
                           const LevelTable& table, float* scales, float* z, void* workspace, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (n == 0) {  // one scale (0) for an empty tensor with B = 0, none otherwise
    if (block_size == 0) cudaMemsetAsync(scales, 0, sizeof(float), s);
    return launch_status();
  }
  return run_blocks<true>(x, dtype_id, n, bits, block_size, rule, SeedKeys{0, 0}, kStochastic, table, scales, nullptr,
                          nullptr, z, workspace, s);
}

}  // namespace cuda
}  // namespace tnq
