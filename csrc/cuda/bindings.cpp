// Boundary of the CUDA backend: validates arguments and payload headers (ValueError naming the argument), allocates
// outputs with torch, and launches the kernels of csrc/cuda on the current stream of the tensor's device, under a
// device guard. Compiled by the host C++ compiler as part of the CppExtension, with no CUDA headers and no
// torch CUDA libraries: the stream and the guard come through c10's generic device-guard interface, which the
// CUDA build of torch implements, so the same object works with a CPU-only torch (where no CUDA tensor can
// reach it) and with a CUDA torch. The kernels (csrc/cuda/*.cu) are nvcc objects linked into the same library.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../cpu/kernels.h"  // the level tables (one implementation for both backends)
#include "../validate.h"
#include "kernels.h"

namespace tnq {
namespace cuda {
namespace {

// ---- argument checks: csrc/validate.h, plus the device ----

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cuda(), name, " must be a CUDA tensor for the CUDA kernel, got device ",
                    t.device());
}

void check_launch(const char* err, const char* op) {
  TORCH_CHECK(err == nullptr, "tnq::", op, " CUDA kernel launch failed: ", err);
}

// The current stream of `device` as a cudaStream_t, through the generic interface (no c10_cuda link needed).
void* current_stream(const at::Device& device) {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(device).native_handle();
}

// Contiguous, and with its data at an address the kernels' vector accesses need. Fresh torch allocations are
// 256-byte aligned; only a view with an odd storage offset is copied.
at::Tensor aligned(const at::Tensor& t, int64_t align) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.const_data_ptr()) % align != 0) c = c.clone();
  return c;
}

LevelTable level_table(int codebook, int bits) {
  const cpu::Tables& t = cpu::tables(codebook, bits);
  LevelTable out;
  std::memcpy(out.c, t.c, sizeof(out.c));
  std::memcpy(out.inv_gap, t.inv_gap, sizeof(out.inv_gap));
  return out;
}

HeaderWords header_words(const Header& h) {
  uint8_t p[kHeaderBytes];
  write_header(p, h);
  HeaderWords w;
  std::memcpy(w.w, p, kHeaderBytes);
  return w;
}

// ---- the seven ops ----

at::Tensor compress_cuda(const at::Tensor& x_in, int64_t bits, int64_t block_size, int64_t codebook, int64_t seed) {
  const int dt = check_compress_args(x_in, bits, block_size, codebook);
  check_cuda(x_in, "x");
  const c10::DeviceGuard guard(x_in.device());
  const at::Tensor x = aligned(x_in, 16);
  const int64_t n = x.numel();
  at::Tensor out = at::empty({payload_bytes(n, int(bits), block_size)}, x.options().dtype(at::kByte));
  const int64_t ws_bytes = compress_workspace_bytes(n, block_size);
  at::Tensor ws = at::empty({ws_bytes}, x.options().dtype(at::kByte));
  const HeaderWords hw = header_words(Header{int(bits), int(codebook), dt, block_size, 0u, n});
  check_launch(compress(x.const_data_ptr(), dt, n, int(bits), block_size, scale_rule(int(codebook)),
                        seed_keys(uint64_t(seed)), level_table(int(codebook), int(bits)), hw,
                        out.mutable_data_ptr<uint8_t>(), ws_bytes ? ws.mutable_data_ptr() : nullptr,
                        current_stream(x.device())),
               "compress");
  return out;
}

at::Tensor decode_sum(at::TensorList payloads, std::optional<at::ArrayRef<double>> weights,
                      c10::SymIntArrayRef shape_sym, at::ScalarType dtype, bool single) {
  check_sum_args(payloads, weights);
  const int out_dt = dtype_id_of(dtype, "dtype");
  const c10::IntArrayRef shape = C10_AS_INTARRAYREF_SLOW(shape_sym);
  const size_t W = payloads.size();
  auto name_of = [&](size_t w) { return single ? std::string("payload") : "payloads[" + std::to_string(w) + "]"; };
  const at::Device device = payloads[0].device();
  for (size_t w = 0; w < W; ++w) {
    const at::Tensor& p = payloads[w];
    const std::string name = name_of(w);
    check_payload_tensor(p, name);
    check_cuda(p, name.c_str());
    TORCH_CHECK_VALUE(p.device() == device, name, " is on ", p.device(), " but payloads[0] is on ", device);
  }
  const c10::DeviceGuard guard(device);
  // every header in one device-to-host copy, validated before any kernel reads a payload
  std::vector<at::Tensor> heads;
  heads.reserve(W);
  for (const at::Tensor& p : payloads) heads.push_back(p.slice(0, 0, kHeaderBytes));
  const at::Tensor host = (W == 1 ? heads[0] : at::cat(heads)).contiguous().to(at::kCPU);
  const uint8_t* hp = host.const_data_ptr<uint8_t>();
  std::vector<Header> hs;
  std::vector<at::Tensor> keep;  // aligned copies must outlive the launches
  for (size_t w = 0; w < W; ++w) {
    hs.push_back(parse_header(hp + w * kHeaderBytes, payloads[w].numel(), name_of(w)));
    check_shape(hs.back(), shape, name_of(w));
    keep.push_back(aligned(payloads[w], 4));
  }
  const int64_t n = hs[0].numel;
  at::Tensor out = at::empty(shape, payloads[0].options().dtype(dtype));
  if (n == 0) return out;
  void* stream = current_stream(device);
  // runs of consecutive payloads with one (bits, codebook), at most kMaxSum each; later runs continue from the
  // fp32 accumulator (out itself when it is fp32), so the order w = 0, 1, ... and every rounding stay as defined
  at::Tensor acc;
  size_t start = 0;
  while (start < W) {
    size_t end = start + 1;
    while (end < W && end - start < size_t(kMaxSum) && hs[end].bits == hs[start].bits &&
           hs[end].codebook == hs[start].codebook)
      ++end;
    SumRun run{};
    run.count = int(end - start);
    run.weighted = weights.has_value() ? 1 : 0;
    for (size_t w = start; w < end; ++w) {
      const uint8_t* base = keep[w].const_data_ptr<uint8_t>();
      run.scales[w - start] = reinterpret_cast<const float*>(base + kHeaderBytes);
      run.words[w - start] = reinterpret_cast<const uint32_t*>(base + codes_offset(n, hs[w].block_size));
      run.block_size[w - start] = hs[w].block_size;
      // the reference multiplies by the weight as an fp32 tensor
      run.weight[w - start] = weights.has_value() ? static_cast<float>((*weights)[w]) : 1.0f;
    }
    const bool last = end == W;
    const float* acc_in = start == 0 ? nullptr : acc.const_data_ptr<float>();
    void* dst;
    int dst_dt;
    if (last) {
      dst = out.mutable_data_ptr();
      dst_dt = out_dt;
    } else {
      if (!acc.defined()) acc = out_dt == kFloat32 ? out : at::empty({n}, out.options().dtype(at::kFloat));
      dst = acc.mutable_data_ptr();
      dst_dt = kFloat32;
    }
    check_launch(decompress_sum(run, n, hs[start].bits, level_table(hs[start].codebook, hs[start].bits), acc_in,
                                dst, dst_dt, stream),
                 single ? "decompress" : "decompress_sum");
    start = end;
  }
  return out;
}

at::Tensor decompress_sum_cuda(at::TensorList payloads, std::optional<at::ArrayRef<double>> weights,
                               c10::SymIntArrayRef shape, at::ScalarType dtype) {
  return decode_sum(payloads, weights, shape, dtype, false);
}

at::Tensor decompress_cuda(const at::Tensor& payload, c10::SymIntArrayRef shape, at::ScalarType dtype) {
  return decode_sum(at::TensorList(&payload, 1), std::nullopt, shape, dtype, true);
}

std::tuple<at::Tensor, at::Tensor> scale_truncate_cuda(const at::Tensor& x_in, int64_t bits, int64_t block_size,
                                                       int64_t codebook) {
  const int dt = check_compress_args(x_in, bits, block_size, codebook);
  check_cuda(x_in, "x");
  const c10::DeviceGuard guard(x_in.device());
  const at::Tensor x = aligned(x_in, 16);
  const int64_t n = x.numel();
  const int64_t nblocks = num_blocks(n, block_size);
  at::Tensor z = at::empty({n}, x.options().dtype(at::kFloat));
  if (n == 0) return {at::zeros({nblocks}, x.options().dtype(at::kFloat)), z};
  at::Tensor scales = at::empty({nblocks}, x.options().dtype(at::kFloat));
  const int64_t ws_bytes = compress_workspace_bytes(n, block_size);
  at::Tensor ws = at::empty({ws_bytes}, x.options().dtype(at::kByte));
  check_launch(scale_truncate(x.const_data_ptr(), dt, n, int(bits), block_size, scale_rule(int(codebook)),
                              level_table(int(codebook), int(bits)), scales.mutable_data_ptr<float>(),
                              z.mutable_data_ptr<float>(), ws_bytes ? ws.mutable_data_ptr() : nullptr,
                              current_stream(x.device())),
               "scale_truncate");
  return {scales, z};
}

at::Tensor quantize_cuda(const at::Tensor& z_in, int64_t bits, int64_t codebook, int64_t seed) {
  TORCH_CHECK_VALUE(z_in.scalar_type() == at::kFloat, "z must be float32 (the output of scale_truncate), got ",
                    z_in.scalar_type());
  check_bits(bits);
  check_codebook(codebook);
  check_cuda(z_in, "z");
  const c10::DeviceGuard guard(z_in.device());
  const at::Tensor z = z_in.contiguous();
  at::Tensor codes = at::empty({z.numel()}, z.options().dtype(at::kByte));
  check_launch(quantize(z.const_data_ptr<float>(), z.numel(), int(bits), seed_keys(uint64_t(seed)),
                        level_table(int(codebook), int(bits)), codes.mutable_data_ptr<uint8_t>(),
                        current_stream(z.device())),
               "quantize");
  return codes;
}

at::Tensor pack_cuda(const at::Tensor& codes_in, int64_t bits) {
  TORCH_CHECK_VALUE(codes_in.scalar_type() == at::kByte, "codes must be uint8, got ", codes_in.scalar_type());
  check_bits(bits);
  check_cuda(codes_in, "codes");
  const c10::DeviceGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous();
  const int64_t n = codes.numel();
  at::Tensor words = at::empty({bits * ((n + 31) / 32)}, codes.options().dtype(at::kInt));
  check_launch(pack(codes.const_data_ptr<uint8_t>(), n, int(bits), reinterpret_cast<uint32_t*>(words.mutable_data_ptr()),
                    current_stream(codes.device())),
               "pack");
  return words;
}

at::Tensor unpack_cuda(const at::Tensor& words_in, int64_t bits, c10::SymInt n_sym) {
  const int64_t n = check_unpack_args(words_in, bits, n_sym);
  check_cuda(words_in, "words");
  const c10::DeviceGuard guard(words_in.device());
  const at::Tensor words = words_in.contiguous();
  at::Tensor codes = at::empty({n}, words.options().dtype(at::kByte));
  check_launch(unpack(reinterpret_cast<const uint32_t*>(words.const_data_ptr()), n, int(bits),
                      codes.mutable_data_ptr<uint8_t>(), current_stream(words.device())),
               "unpack");
  return codes;
}

}  // namespace
}  // namespace cuda
}  // namespace tnq

TORCH_LIBRARY_IMPL(tnq, CUDA, m) {
  m.impl("compress", &tnq::cuda::compress_cuda);
  m.impl("decompress", &tnq::cuda::decompress_cuda);
  m.impl("decompress_sum", &tnq::cuda::decompress_sum_cuda);
  m.impl("scale_truncate", &tnq::cuda::scale_truncate_cuda);
  m.impl("quantize", &tnq::cuda::quantize_cuda);
  m.impl("pack", &tnq::cuda::pack_cuda);
  m.impl("unpack", &tnq::cuda::unpack_cuda);
}
