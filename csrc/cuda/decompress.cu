// decompress and decompress_sum (docs/architecture.md): unpack + decode ĝ = scale · c[code] (one fp32 multiply) and, for a
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

// ---- the capture path: the header is read on the device ----

// Header of the payload at p (4-byte aligned words) parsed and validated as validate.h's parse_header does, against
// n (from the caller's shape) and the payload's length; every thread of every CTA parses it (32 bytes, L1-resident).
struct DeviceHeader {
  bool valid;
  int bits, codebook;
  int64_t block_size, codes_w0;
};
__device__ __forceinline__ DeviceHeader parse_header_dev(const uint32_t* __restrict__ p, int64_t nbytes, int64_t n) {
  uint32_t w[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) w[k] = __ldg(p + k);
  DeviceHeader h;
  h.bits = int((w[1] >> 8) & 0xffu);
  h.codebook = int((w[1] >> 16) & 0xffu);
  h.block_size = int64_t(w[2]);
  const uint64_t numel = uint64_t(w[4]) | (uint64_t(w[5]) << 32);
  const bool fields = w[0] == 0x4B514E54u /* "TNQK" little-endian */ &&
                      (w[1] & 0xffu) == kFormatVersion && h.bits >= kMinBits && h.bits <= kMaxBits &&
                      h.codebook < kNumCodebooks && ((w[1] >> 24) & 0xffu) <= uint32_t(kBFloat16) &&
                      h.block_size % 32 == 0 && h.block_size <= kMaxBlockSize && (w[3] & ~kFlagNonFinite) == 0 &&
                      w[6] == 0 && w[7] == 0 && numel == uint64_t(n);
  h.valid = fields && payload_bytes(n, h.bits, h.block_size) == nbytes;
  h.codes_w0 = codes_offset(n, h.block_size) / 4;
  return h;
}

// out = [acc_in +] [weight *] decode(payload) for one payload whose layout only the device knows: bits, codebook
// and block size come from its header, the levels from `levels` (kNumCodebooks x 8 x 256 fp32, slot
// (codebook * 8 + bits - 1) * 256). An invalid header decodes to NaN and nothing past it is read.
template <int DT>
__global__ void __launch_bounds__(kThreads)
    checked_decode_kernel(const uint32_t* __restrict__ p, int64_t nbytes, int64_t n, const float* __restrict__ levels,
                          float weight, int weighted, const float* acc_in, typename Elem<DT>::T* out) {
  constexpr int V = Elem<DT>::V;
  const DeviceHeader h = parse_header_dev(p, nbytes, n);
  const float* c = levels + (h.valid ? (h.codebook * kMaxBits + h.bits - 1) * 256 : 0);
  const uint32_t* words = p + h.codes_w0;
  const float* scales = reinterpret_cast<const float*>(p) + kHeaderBytes / 4;
  const int64_t units = (n + V - 1) / V;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; u < units; u += stride) {
    const int64_t i0 = u * V;
    float acc[V];
    if (h.valid) {
      const int o = int(i0 & 31);
      uint32_t plane[kMaxBits];
#pragma unroll
      for (int q = 0; q < kMaxBits; ++q) plane[q] = q < h.bits ? (__ldg(words + (i0 >> 5) * h.bits + q) >> o) : 0u;
      const float scale = __ldg(scales + (h.block_size == 0 ? 0 : i0 / h.block_size));
#pragma unroll
      for (int t = 0; t < V; ++t) {
        uint32_t code = 0;
#pragma unroll
        for (int q = 0; q < kMaxBits; ++q) code |= ((plane[q] >> t) & 1u) << q;
        acc[t] = __fmul_rn(scale, __ldg(c + code));
      }
    } else {
#pragma unroll
      for (int t = 0; t < V; ++t) acc[t] = __int_as_float(0x7fc00000);
    }
#pragma unroll
    for (int t = 0; t < V; ++t) {
      if (weighted) acc[t] = __fmul_rn(acc[t], weight);
      if (acc_in != nullptr && i0 + t < n) acc[t] = __fadd_rn(acc_in[i0 + t], acc[t]);
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

bool stream_is_capturing(void* stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &st) == cudaSuccess &&
         st != cudaStreamCaptureStatusNone;
}

const char* decompress_checked(const uint8_t* payload, int64_t nbytes, int64_t n, const float* levels, float weight,
                               int weighted, const float* acc_in, void* out, int out_dtype_id, void* stream) {
  if (n == 0) return launch_status();
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dispatch_dtype(out_dtype_id, [&](auto dt, auto) {
    constexpr int DT = decltype(dt)::value;
    constexpr int V = dev::Elem<DT>::V;
    dev::checked_decode_kernel<DT><<<grid_for((n + V - 1) / V, dev::kThreads), dev::kThreads, 0, s>>>(
        reinterpret_cast<const uint32_t*>(payload), nbytes, n, levels, weight, weighted, acc_in,
        static_cast<typename dev::Elem<DT>::T*>(out));
    return launch_status();
  });
}

}  // namespace cuda
}  // namespace tnq
