// decompress and decompress_sum (SPEC §2): unpack + decode ĝ = scale · c[code] (one fp32 multiply) and, for a
// sum, acc = acc + weight · ĝ in fp32 in payload order — the server-side aggregation with no W×n intermediate.
// One thread per 16 bytes of output (4 fp32 or 8 fp16/bf16 elements, always inside one group of 32), so each
// thread reads its group's b words once per payload and stores one 16-byte vector. decompress is a run of one.
#include "common.cuh"

namespace tnq {
namespace cuda {
namespace dev {

template <int DT>
__device__ __forceinline__ typename Elem<DT>::T from_f32(float v) {
  if constexpr (DT == kFloat32) {
    return v;
  } else if constexpr (DT == kFloat16) {
    return __half_as_ushort(__float2half_rn(v));
  } else {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
}

// Scale block of element i: B is uniform per payload; 2048 and friends take the shift.
__device__ __forceinline__ int64_t block_of(int64_t i, int64_t B) {
  if (B == 0) return 0;
  if ((B & (B - 1)) == 0) return i >> (__ffsll(B) - 1);
  return i / B;
}

template <int DT, int BITS>
__global__ void __launch_bounds__(kThreads)
    decode_sum_kernel(const __grid_constant__ SumRun run, int64_t n, int bits, const __grid_constant__ LevelTable tab,
                      const float* acc_in, typename Elem<DT>::T* out) {
  constexpr int V = Elem<DT>::V;
  using T = typename Elem<DT>::T;
  __shared__ float c[256];
  const int nb = BITS ? BITS : bits;
  for (int j = threadIdx.x; j < (1 << nb); j += blockDim.x) c[j] = tab.c[j];
  __syncthreads();
  const int64_t units = (n + V - 1) / V;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; u < units; u += stride) {
    const int64_t i0 = u * V;
    const int64_t g = i0 >> 5;
    const int o = int(i0 & 31);
    float acc[V];
    if (acc_in != nullptr) {
#pragma unroll
      for (int t = 0; t < V; ++t) acc[t] = i0 + t < n ? acc_in[i0 + t] : 0.0f;
    }
    for (int w = 0; w < run.count; ++w) {
      const uint32_t* wp = run.words[w] + g * nb;
      uint32_t plane[BITS ? BITS : kMaxBits];
#pragma unroll
      for (int p = 0; p < (BITS ? BITS : kMaxBits); ++p) plane[p] = (p < nb) ? (__ldg(wp + p) >> o) : 0u;
      const float scale = __ldg(run.scales[w] + block_of(i0, run.block_size[w]));
#pragma unroll
      for (int t = 0; t < V; ++t) {
        uint32_t code = 0;
#pragma unroll
        for (int p = 0; p < (BITS ? BITS : kMaxBits); ++p) code |= ((plane[p] >> t) & 1u) << p;
        float v = __fmul_rn(scale, c[code]);
        if (run.weighted) v = __fmul_rn(v, run.weight[w]);
        acc[t] = (w == 0 && acc_in == nullptr) ? v : __fadd_rn(acc[t], v);
      }
    }
    if (i0 + V <= n) {
      if constexpr (DT == kFloat32) {
        *reinterpret_cast<float4*>(out + i0) = make_float4(acc[0], acc[1], acc[2], acc[3]);
      } else {
        uint32_t h[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) h[k] = uint32_t(from_f32<DT>(acc[2 * k])) | (uint32_t(from_f32<DT>(acc[2 * k + 1])) << 16);
        *reinterpret_cast<uint4*>(out + i0) = make_uint4(h[0], h[1], h[2], h[3]);
      }
    } else {
#pragma unroll
      for (int t = 0; t < V; ++t)
        if (i0 + t < n) out[i0 + t] = from_f32<DT>(acc[t]);
    }
  }
}

}  // namespace dev

const char* decompress_sum(const SumRun& run, int64_t n, int bits, const LevelTable& table, const float* acc_in,
                           void* out, int out_dtype_id, void* stream) {
  if (n == 0) return launch_status();
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dispatch_dtype_bits(out_dtype_id, bits, [&](auto dt, auto b) {
    constexpr int DT = decltype(dt)::value, BITS = decltype(b)::value;
    constexpr int V = dev::Elem<DT>::V;
    dev::decode_sum_kernel<DT, BITS><<<grid_for((n + V - 1) / V, dev::kThreads), dev::kThreads, 0, s>>>(
        run, n, bits, table, acc_in, static_cast<typename dev::Elem<DT>::T*>(out));
    return launch_status();
  });
}

}  // namespace cuda
}  // namespace tnq
