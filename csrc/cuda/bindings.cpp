// Boundary of the CUDA backend: validates arguments and payload headers (ValueError naming the argument; while a
// CUDA graph is captured the decoders validate the header on the device instead, see launch_sum_captured),
// allocates outputs with torch, and launches the kernels of csrc/cuda on the current stream of the tensor's device, under a
// device guard. Compiled by the host C++ compiler as part of the CppExtension, with no CUDA headers and no
// torch CUDA libraries: the stream and the guard come through c10's generic device-guard interface, which the
// CUDA build of torch implements, so the same object works with a CPU-only torch (where no CUDA tensor can
// reach it) and with a CUDA torch. The kernels (csrc/cuda/*.cu) are nvcc objects linked into the same library.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <cstring>
#include <functional>
#include <mutex>
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
  fill_bins(out, t.gpu, bits);
  return out;
}

HeaderWords header_words(const Header& h) {
  uint8_t p[kHeaderBytes];
  write_header(p, h);
  HeaderWords w;
  std::memcpy(w.w, p, kHeaderBytes);
  return w;
}

// ---- the ops ----

at::Tensor compress_cuda(const at::Tensor& x_in, int64_t bits, int64_t block_size, int64_t codebook, int64_t seed,
                         int64_t rounding) {
  const int dt = check_compress_args(x_in, bits, block_size, codebook);
  check_rounding(rounding);
  check_cuda(x_in, "x");
  const c10::DeviceGuard guard(x_in.device());
  const at::Tensor x = aligned(x_in, 16);
  const int64_t n = x.numel();
  at::Tensor out = at::empty({payload_bytes(n, int(bits), block_size)}, x.options().dtype(at::kByte));
  const int64_t ws_bytes = compress_workspace_bytes(n, block_size);
  at::Tensor ws = at::empty({ws_bytes}, x.options().dtype(at::kByte));
  const HeaderWords hw = header_words(Header{int(bits), int(codebook), dt, block_size, 0u, n});
  check_launch(compress(x.const_data_ptr(), dt, n, int(bits), block_size, scale_rule(int(codebook)),
                        seed_keys(uint64_t(seed)), int(rounding), level_table(int(codebook), int(bits)), hw,
                        out.mutable_data_ptr<uint8_t>(), ws_bytes ? ws.mutable_data_ptr() : nullptr,
                        current_stream(x.device())),
               "compress");
  return out;
}

// Validates every payload tensor (device, dtype, shape) and reads all headers with one device-to-host copy, before
// any kernel reads a payload.
std::vector<Header> read_headers(at::TensorList payloads, const std::function<std::string(size_t)>& name_of) {
  const size_t W = payloads.size();
  const at::Device device = payloads[0].device();
  for (size_t w = 0; w < W; ++w) {
    const at::Tensor& p = payloads[w];
    const std::string name = name_of(w);
    check_payload_tensor(p, name);
    check_cuda(p, name.c_str());
    TORCH_CHECK_VALUE(p.device() == device, name, " is on ", p.device(), " but payloads[0] is on ", device);
  }
  std::vector<at::Tensor> heads;
  heads.reserve(W);
  for (const at::Tensor& p : payloads) heads.push_back(p.slice(0, 0, kHeaderBytes));
  const at::Tensor host = (W == 1 ? heads[0] : at::cat(heads)).contiguous().to(at::kCPU);
  const uint8_t* hp = host.const_data_ptr<uint8_t>();
  std::vector<Header> hs;
  for (size_t w = 0; w < W; ++w) hs.push_back(parse_header(hp + w * kHeaderBytes, payloads[w].numel(), name_of(w)));
  return hs;
}

// The decode launches of decompress / decompress_sum and their _into forms: out (contiguous, 16-byte aligned, n
// elements, dtype out_dt) = sum over w of weight[w] * decode(payloads[w]), headers already validated.
void launch_sum(at::TensorList payloads, const std::vector<Header>& hs, std::optional<at::ArrayRef<double>> weights,
                const at::Tensor& out, int out_dt, bool single) {
  const size_t W = payloads.size();
  const int64_t n = hs[0].numel;
  if (n == 0) return;
  std::vector<at::Tensor> keep;  // aligned copies must outlive the launches
  for (size_t w = 0; w < W; ++w) keep.push_back(aligned(payloads[w], 4));
  void* stream = current_stream(out.device());
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
}

// The levels of every (codebook, bits) on `device` for the capture path (kNumCodebooks x 8 x 256 fp32), built by
// the first eager decode on that device: a graph capture cannot copy from the host.
at::Tensor all_levels(const at::Device& device, bool build) {
  static std::mutex mu;
  static std::vector<at::Tensor> cache;
  const std::lock_guard<std::mutex> lock(mu);
  const size_t d = size_t(device.index());
  if (cache.size() <= d) cache.resize(d + 1);
  if (!cache[d].defined() && build) {
    at::Tensor host = at::zeros({kNumCodebooks * kMaxBits * 256}, at::kFloat);
    float* h = host.mutable_data_ptr<float>();
    for (int c = 0; c < kNumCodebooks; ++c)
      for (int b = kMinBits; b <= kMaxBits; ++b)
        std::memcpy(h + (c * kMaxBits + b - 1) * 256, cpu::tables(c, b).c, sizeof(float) << b);
    cache[d] = host.to(device);
  }
  TORCH_CHECK(cache[d].defined(), "tnq CUDA: decompress under CUDA graph capture needs one eager decompress on ",
              device, " first (it builds the device-side level tables); warm up before capturing");
  return cache[d];
}

// While the stream is captured: no header read on the host. Each payload is one launch that parses and validates
// its header on the device, chained in order through an fp32 accumulator as launch_sum does.
void launch_sum_captured(at::TensorList payloads, std::optional<at::ArrayRef<double>> weights, const at::Tensor& out,
                         int out_dt, bool single, const std::function<std::string(size_t)>& name_of) {
  const size_t W = payloads.size();
  for (size_t w = 0; w < W; ++w) {
    check_payload_tensor(payloads[w], name_of(w));
    check_cuda(payloads[w], name_of(w).c_str());
  }
  const int64_t n = out.numel();
  if (n == 0) return;
  const at::Tensor levels = all_levels(out.device(), false);
  void* stream = current_stream(out.device());
  const at::Tensor acc = (W == 1 || out_dt == kFloat32) ? out : at::empty({n}, out.options().dtype(at::kFloat));
  for (size_t w = 0; w < W; ++w) {
    const at::Tensor p = aligned(payloads[w], 4);
    const bool last = w + 1 == W;
    check_launch(decompress_checked(p.const_data_ptr<uint8_t>(), p.numel(), n, levels.const_data_ptr<float>(),
                                    weights.has_value() ? static_cast<float>((*weights)[w]) : 1.0f,
                                    weights.has_value() ? 1 : 0, w == 0 ? nullptr : acc.const_data_ptr<float>(),
                                    last ? out.mutable_data_ptr() : acc.mutable_data_ptr(), last ? out_dt : kFloat32,
                                    stream),
                 single ? "decompress" : "decompress_sum");
  }
}

std::function<std::string(size_t)> payload_names(bool single) {
  return [single](size_t w) { return single ? std::string("payload") : "payloads[" + std::to_string(w) + "]"; };
}

at::Tensor decode_sum(at::TensorList payloads, std::optional<at::ArrayRef<double>> weights,
                      c10::SymIntArrayRef shape_sym, at::ScalarType dtype, bool single) {
  check_sum_args(payloads, weights);
  const int out_dt = dtype_id_of(dtype, "dtype");
  const c10::IntArrayRef shape = C10_AS_INTARRAYREF_SLOW(shape_sym);
  const auto name_of = payload_names(single);
  const c10::DeviceGuard guard(payloads[0].device());
  if (stream_is_capturing(current_stream(payloads[0].device()))) {
    for (int64_t d : shape) TORCH_CHECK_VALUE(d >= 0, "shape ", shape, " has a negative dimension");
    at::Tensor out = at::empty(shape, payloads[0].options().dtype(dtype));
    launch_sum_captured(payloads, weights, out, out_dt, single, name_of);
    return out;
  }
  const std::vector<Header> hs = read_headers(payloads, name_of);
  for (size_t w = 0; w < hs.size(); ++w) check_shape(hs[w], shape, name_of(w));
  all_levels(payloads[0].device(), true);  // an eager decode prepares a later capture
  at::Tensor out = at::empty(shape, payloads[0].options().dtype(dtype));
  launch_sum(payloads, hs, weights, out, out_dt, single);
  return out;
}

// decompress_into / decompress_sum_into: the same decode into the caller's tensor (e.g. a DDP bucket), whose dtype
// is the output dtype. A view the 16-byte vector stores cannot write directly (odd offset) is decoded into an
// aligned temporary and copied in.
void decode_sum_into(at::TensorList payloads, std::optional<at::ArrayRef<double>> weights, const at::Tensor& out,
                     bool single) {
  check_sum_args(payloads, weights);
  const int out_dt = dtype_id_of(out.scalar_type(), "out.dtype");
  TORCH_CHECK_VALUE(out.is_contiguous(), "out must be contiguous, got strides ", out.strides(), " for shape ",
                    out.sizes());
  check_cuda(out, "out");
  TORCH_CHECK_VALUE(out.device() == payloads[0].device(), "out is on ", out.device(), " but the payload is on ",
                    payloads[0].device());
  const auto name_of = payload_names(single);
  const c10::DeviceGuard guard(out.device());
  if (stream_is_capturing(current_stream(out.device()))) {  // element stores: any alignment of out is fine
    launch_sum_captured(payloads, weights, out, out_dt, single, name_of);
    return;
  }
  const std::vector<Header> hs = read_headers(payloads, name_of);
  const int64_t numel = out.numel();
  for (size_t w = 0; w < hs.size(); ++w) check_shape(hs[w], c10::IntArrayRef(&numel, 1), name_of(w));
  all_levels(out.device(), true);
  if (reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 16 == 0) {
    launch_sum(payloads, hs, weights, out, out_dt, single);
  } else {
    const at::Tensor tmp = at::empty_like(out);
    launch_sum(payloads, hs, weights, tmp, out_dt, single);
    out.copy_(tmp);
  }
}

at::Tensor decompress_sum_cuda(at::TensorList payloads, std::optional<at::ArrayRef<double>> weights,
                               c10::SymIntArrayRef shape, at::ScalarType dtype) {
  return decode_sum(payloads, weights, shape, dtype, false);
}

at::Tensor decompress_cuda(const at::Tensor& payload, c10::SymIntArrayRef shape, at::ScalarType dtype) {
  return decode_sum(at::TensorList(&payload, 1), std::nullopt, shape, dtype, true);
}

void decompress_sum_into_cuda(at::TensorList payloads, std::optional<at::ArrayRef<double>> weights,
                              const at::Tensor& out) {
  decode_sum_into(payloads, weights, out, false);
}

void decompress_into_cuda(const at::Tensor& payload, const at::Tensor& out) {
  decode_sum_into(at::TensorList(&payload, 1), std::nullopt, out, true);
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

at::Tensor quantize_cuda(const at::Tensor& z_in, int64_t bits, int64_t codebook, int64_t seed, int64_t rounding) {
  TORCH_CHECK_VALUE(z_in.scalar_type() == at::kFloat, "z must be float32 (the output of scale_truncate), got ",
                    z_in.scalar_type());
  check_bits(bits);
  check_codebook(codebook);
  check_rounding(rounding);
  check_cuda(z_in, "z");
  const c10::DeviceGuard guard(z_in.device());
  const at::Tensor z = z_in.contiguous();
  at::Tensor codes = at::empty({z.numel()}, z.options().dtype(at::kByte));
  check_launch(quantize(z.const_data_ptr<float>(), z.numel(), int(bits), seed_keys(uint64_t(seed)), int(rounding),
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
  m.impl("decompress_into", &tnq::cuda::decompress_into_cuda);
  m.impl("decompress_sum_into", &tnq::cuda::decompress_sum_into_cuda);
  m.impl("scale_truncate", &tnq::cuda::scale_truncate_cuda);
  m.impl("quantize", &tnq::cuda::quantize_cuda);
  m.impl("pack", &tnq::cuda::pack_cuda);
  m.impl("unpack", &tnq::cuda::unpack_cuda);
}
