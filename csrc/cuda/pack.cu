// Job 3 alone (docs/architecture.md; layout in docs/format.md) and its inverse: codes <-> b-bit bit-plane words.
// pack: one warp per group of 32 codes; one __ballot_sync per plane is the plane's word, lane p stores word p.
// unpack: one thread per element gathers bit j of the group's b words.
#include "common.cuh"

namespace tnq {
namespace cuda {
namespace dev {

__global__ void __launch_bounds__(kThreads)
    pack_kernel(const uint8_t* __restrict__ codes, int64_t n, int bits, uint32_t* __restrict__ words) {
  const int lane = threadIdx.x & 31;
  const int64_t ngroups = (n + 31) >> 5;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t g = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; g < ngroups; g += warps) {
    const int64_t i = g * 32 + lane;
    const uint32_t c = i < n ? codes[i] : 0u;  // tail codes are 0
    uint32_t mine = 0;
    for (int p = 0; p < bits; ++p) {
      const uint32_t b = __ballot_sync(kFullMask, (c >> p) & 1u);
      if (lane == p) mine = b;
    }
    if (lane < bits) words[g * bits + lane] = mine;
  }
}

__global__ void __launch_bounds__(kThreads)
    unpack_kernel(const uint32_t* __restrict__ words, int64_t n, int bits, uint8_t* __restrict__ codes) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint32_t* w = words + (i >> 5) * bits;
    const int j = int(i & 31);
    uint32_t c = 0;
    for (int p = 0; p < bits; ++p) c |= ((__ldg(w + p) >> j) & 1u) << p;
    codes[i] = uint8_t(c);
  }
}

}  // namespace dev

const char* pack(const uint8_t* codes, int64_t n, int bits, uint32_t* words, void* stream) {
  if (n == 0) return launch_status();
  const int64_t ngroups = (n + 31) / 32;
  dev::pack_kernel<<<grid_for(ngroups, dev::kThreads / 32), dev::kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      codes, n, bits, words);
  return launch_status();
}

const char* unpack(const uint32_t* words, int64_t n, int bits, uint8_t* codes, void* stream) {
  if (n == 0) return launch_status();
  dev::unpack_kernel<<<grid_for(n, dev::kThreads), dev::kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      words, n, bits, codes);
  return launch_status();
}

}  // namespace cuda
}  // namespace tnq
