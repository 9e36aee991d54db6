// Job 2 alone (docs/architecture.md): codebook lookup + stochastic rounding of z, one thread per element.
#include "common.cuh"

namespace tnq {
namespace cuda {
namespace dev {

template <int BITS>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(const float* __restrict__ z, int64_t n, int bits, SeedKeys keys, int rounding,
                    const __grid_constant__ LevelTable tab, uint8_t* __restrict__ codes) {
  __shared__ SharedTable st;
  load_table(st, tab, bits);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const uint8_t nan_code = uint8_t((1 << (BITS ? BITS : bits)) - 2);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float v = z[i];
    // the reference's searchsorted puts NaN after every level (k = s-1) and p = NaN never rounds up; the
    // fused kernels never see NaN (truncate maps a non-finite block to c_0), only this stage op can
    codes[i] = v != v ? nan_code
                      : uint8_t(round_code<BITS>(v, bits16(keys, uint64_t(i)), st, bits, rounding == kNearest));
  }
}

}  // namespace dev

const char* quantize(const float* z, int64_t n, int bits, SeedKeys keys, int rounding, const LevelTable& table,
                     uint8_t* codes, void* stream) {
  if (n == 0) return launch_status();
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dispatch_bits<kFloat32>(bits, [&](auto, auto b) {
    constexpr int BITS = decltype(b)::value;
    dev::quantize_kernel<BITS><<<grid_for(n, dev::kThreads), dev::kThreads, 0, s>>>(z, n, bits, keys, rounding,
                                                                                    table, codes);
    return launch_status();
  });
}

}  // namespace cuda
}  // namespace tnq
