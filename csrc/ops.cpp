// Boundary of the C++ backend: argument and header validation, allocation, and the CPU registrations of the
// seven `tnq` ops. The schemas are defined once, in tnq_kernels/ops.py, before this library is loaded; here we
// only attach kernels (TORCH_LIBRARY_IMPL). The kernel bodies live in csrc/cpu/*.cpp (raw pointers, no torch).
// The Python module also exposes the C++ tables, hash and layout so tests can cross-check them with Python.
#include <ATen/ATen.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>  // at::Tensor <-> torch.Tensor for the test hooks
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/kernels.h"
#include "tnq_constants.h"

namespace tnq {
namespace {

// ---- argument checks: ValueError naming the argument, the value and what is accepted ----

int dtype_id_of(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kFloat: return kFloat32;
    case at::kHalf: return kFloat16;
    case at::kBFloat16: return kBFloat16;
    default:
      TORCH_CHECK_VALUE(false, name, " must be float32, float16 or bfloat16, got ", t);
  }
  return -1;
}

at::ScalarType scalar_type_of(int dtype_id) {
  return dtype_id == kFloat32 ? at::kFloat : dtype_id == kFloat16 ? at::kHalf : at::kBFloat16;
}

void check_bits(int64_t bits) {
  TORCH_CHECK_VALUE(bits >= kMinBits && bits <= kMaxBits, "bits must be an int in [", kMinBits, ", ", kMaxBits,
                    "] (2-5 are the fast paths), got ", bits);
}

void check_block_size(int64_t block_size) {
  TORCH_CHECK_VALUE(block_size >= 0 && block_size % 32 == 0 && block_size <= kMaxBlockSize,
                    "block_size must be 0 (one scale per tensor) or a positive multiple of 32 up to 2^30, got ",
                    block_size);
}

void check_codebook(int64_t codebook) {
  TORCH_CHECK_VALUE(codebook >= 0 && codebook < kNumCodebooks,
                    "codebook must be an id 0-3 (0 tnq, 1 tqsgd, 2 nqsgd, 3 qsgd), got ", codebook);
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got device ", t.device());
}

// ---- wire-format header ----

struct Header {
  int bits, codebook, dtype;
  int64_t block_size;
  uint32_t flags;
  int64_t numel;
};

template <typename T>
T read_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // the wire format is little-endian, as is every supported host
  return v;
}

void write_header(uint8_t* p, const Header& h) {
  std::memset(p, 0, kHeaderBytes);
  std::memcpy(p, kMagic, 4);
  p[kOffVersion] = kFormatVersion;
  p[kOffBits] = uint8_t(h.bits);
  p[kOffCodebook] = uint8_t(h.codebook);
  p[kOffDtype] = uint8_t(h.dtype);
  const uint32_t bs = uint32_t(h.block_size);
  const uint64_t n = uint64_t(h.numel);
  std::memcpy(p + kOffBlockSize, &bs, 4);
  std::memcpy(p + kOffFlags, &h.flags, 4);
  std::memcpy(p + kOffNumel, &n, 8);
}

// Validates a payload tensor and its header exactly as tnq_kernels.format.parse_header does (same field names),
// before any data is touched, so a corrupted or truncated payload never reads out of bounds.
Header read_header(const at::Tensor& payload, const std::string& name) {
  TORCH_CHECK_VALUE(payload.scalar_type() == at::kByte && payload.dim() == 1, name,
                    " must be a 1-D uint8 tensor (a tnq payload), got ", payload.scalar_type(), " with shape ",
                    payload.sizes());
  check_cpu(payload, name.c_str());
  const int64_t len = payload.numel();
  TORCH_CHECK_VALUE(len >= kHeaderBytes, name, " length: ", len, " bytes is shorter than the ", kHeaderBytes,
                    "-byte TNQ header");
  uint8_t head[kHeaderBytes];
  if (payload.is_contiguous()) {
    std::memcpy(head, payload.const_data_ptr<uint8_t>(), kHeaderBytes);
  } else {
    const at::Tensor h = payload.slice(0, 0, kHeaderBytes).contiguous();
    std::memcpy(head, h.const_data_ptr<uint8_t>(), kHeaderBytes);
  }
  TORCH_CHECK_VALUE(std::memcmp(head, kMagic, 4) == 0, name, " magic: expected b'TNQK', got bytes ",
                    int(head[0]), ",", int(head[1]), ",", int(head[2]), ",", int(head[3]),
                    " (not a tnq_kernels payload)");
  TORCH_CHECK_VALUE(head[kOffVersion] == kFormatVersion, name, " version: this build reads format version ",
                    int(kFormatVersion), ", got ", int(head[kOffVersion]));
  Header h;
  h.bits = head[kOffBits];
  h.codebook = head[kOffCodebook];
  h.dtype = head[kOffDtype];
  h.block_size = read_le<uint32_t>(head + kOffBlockSize);
  h.flags = read_le<uint32_t>(head + kOffFlags);
  const uint64_t numel = read_le<uint64_t>(head + kOffNumel);
  const uint64_t reserved = read_le<uint64_t>(head + kOffReserved);
  TORCH_CHECK_VALUE(h.bits >= kMinBits && h.bits <= kMaxBits, name, " bits: must be in [1, 8], got ", h.bits);
  TORCH_CHECK_VALUE(h.codebook < kNumCodebooks, name,
                    " codebook: id must be 0-3 (tnq, tqsgd, nqsgd, qsgd), got ", h.codebook);
  TORCH_CHECK_VALUE(h.dtype <= kBFloat16, name, " dtype: id must be 0-2 (float32, float16, bfloat16), got ",
                    h.dtype);
  TORCH_CHECK_VALUE(h.block_size % 32 == 0 && h.block_size <= kMaxBlockSize, name,
                    " block_size: must be 0 or a multiple of 32 up to 2^30, got ", h.block_size);
  TORCH_CHECK_VALUE((h.flags & ~kFlagNonFinite) == 0, name, " flags: unknown bits set in ", h.flags);
  TORCH_CHECK_VALUE(reserved == 0, name, " reserved: bytes 24-31 must be zero, got ", reserved);
  TORCH_CHECK_VALUE(numel < (uint64_t(1) << 62), name, " numel: ", numel, " is not a plausible element count");
  h.numel = int64_t(numel);
  const int64_t need = payload_bytes(h.numel, h.bits, h.block_size);
  TORCH_CHECK_VALUE(len == need, name, " length: header (n=", h.numel, ", bits=", h.bits, ", block_size=",
                    h.block_size, ") needs ", need, " bytes, got ", len);
  return h;
}

void check_shape(const Header& h, c10::IntArrayRef shape, const std::string& name) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    TORCH_CHECK_VALUE(d >= 0, "shape ", shape, " has a negative dimension");
    numel *= d;
  }
  TORCH_CHECK_VALUE(numel == h.numel, "shape ", shape, " holds ", numel, " elements but ", name, " encodes ",
                    h.numel);
}

cpu::PayloadView view_of(const at::Tensor& payload, const Header& h) {
  const uint8_t* base = payload.const_data_ptr<uint8_t>();
  return cpu::PayloadView{base + kHeaderBytes, base + codes_offset(h.numel, h.block_size), h.bits, h.codebook,
                          h.block_size};
}

// ---- the seven ops (CPU kernels) ----

at::Tensor compress_cpu(const at::Tensor& x_in, int64_t bits, int64_t block_size, int64_t codebook, int64_t seed) {
  const int dt = dtype_id_of(x_in.scalar_type(), "x");
  check_bits(bits);
  check_block_size(block_size);
  check_codebook(codebook);
  check_cpu(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.numel();
  const cpu::Layout lay = cpu::layout(n, int(bits), block_size);
  at::Tensor out = at::empty({lay.payload_bytes}, x.options().dtype(at::kByte));
  uint8_t* p = out.mutable_data_ptr<uint8_t>();
  // zero the padding between the scales and the 16-byte aligned codes
  std::memset(p + kHeaderBytes + 4 * lay.nblocks, 0, size_t(lay.codes_offset - kHeaderBytes - 4 * lay.nblocks));
  // scales and words may be unaligned only if the allocator returned an unaligned pointer, which it never does
  float* scales = reinterpret_cast<float*>(p + kHeaderBytes);
  uint32_t* words = reinterpret_cast<uint32_t*>(p + lay.codes_offset);
  const bool bad = cpu::compress(x.const_data_ptr(), dt, n, int(bits), block_size, int(codebook), uint64_t(seed),
                                 scales, words);
  write_header(p, Header{int(bits), int(codebook), dt, block_size, bad ? kFlagNonFinite : 0u, n});
  return out;
}

at::Tensor decode_sum(at::TensorList payloads, std::optional<at::ArrayRef<double>> weights,
                      c10::SymIntArrayRef shape_sym, at::ScalarType dtype, bool single) {
  TORCH_CHECK_VALUE(!payloads.empty(), "payloads must hold at least one payload, got an empty list");
  TORCH_CHECK_VALUE(!weights.has_value() || int64_t(weights->size()) == int64_t(payloads.size()),
                    "weights must have one entry per payload (", payloads.size(), "), got ",
                    weights.has_value() ? int64_t(weights->size()) : 0);
  const int out_dt = dtype_id_of(dtype, "dtype");
  const c10::IntArrayRef shape = C10_AS_INTARRAYREF_SLOW(shape_sym);
  std::vector<at::Tensor> keep;  // contiguous copies must outlive the kernel
  std::vector<cpu::PayloadView> views;
  int64_t n = 0;
  for (size_t w = 0; w < payloads.size(); ++w) {
    const std::string name = single ? "payload" : "payloads[" + std::to_string(w) + "]";
    const Header h = read_header(payloads[w], name);
    check_shape(h, shape, name);
    keep.push_back(payloads[w].contiguous());
    views.push_back(view_of(keep.back(), h));
    n = h.numel;
  }
  std::vector<float> wf;
  if (weights.has_value())
    for (double v : *weights) wf.push_back(static_cast<float>(v));  // the reference multiplies by an fp32 weight
  at::Tensor out = at::empty(shape, payloads[0].options().dtype(dtype));
  if (n > 0)
    cpu::decompress_sum(views.data(), weights.has_value() ? wf.data() : nullptr, int64_t(views.size()), n, out_dt,
                        out.mutable_data_ptr());
  return out;
}

at::Tensor decompress_sum_cpu(at::TensorList payloads, std::optional<at::ArrayRef<double>> weights,
                              c10::SymIntArrayRef shape, at::ScalarType dtype) {
  return decode_sum(payloads, weights, shape, dtype, false);
}

at::Tensor decompress_cpu(const at::Tensor& payload, c10::SymIntArrayRef shape, at::ScalarType dtype) {
  return decode_sum(at::TensorList(&payload, 1), std::nullopt, shape, dtype, true);
}

std::tuple<at::Tensor, at::Tensor> scale_truncate_cpu(const at::Tensor& x_in, int64_t bits, int64_t block_size,
                                                      int64_t codebook) {
  const int dt = dtype_id_of(x_in.scalar_type(), "x");
  check_bits(bits);
  check_block_size(block_size);
  check_codebook(codebook);
  check_cpu(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.numel();
  at::Tensor scales = at::empty({num_blocks(n, block_size)}, x.options().dtype(at::kFloat));
  at::Tensor z = at::empty({n}, x.options().dtype(at::kFloat));
  cpu::scale_truncate(x.const_data_ptr(), dt, n, int(bits), block_size, int(codebook),
                      scales.mutable_data_ptr<float>(), z.mutable_data_ptr<float>());
  return {scales, z};
}

at::Tensor quantize_cpu(const at::Tensor& z_in, int64_t bits, int64_t codebook, int64_t seed) {
  TORCH_CHECK_VALUE(z_in.scalar_type() == at::kFloat, "z must be float32 (the output of scale_truncate), got ",
                    z_in.scalar_type());
  check_bits(bits);
  check_codebook(codebook);
  check_cpu(z_in, "z");
  const at::Tensor z = z_in.contiguous();
  at::Tensor codes = at::empty({z.numel()}, z.options().dtype(at::kByte));
  cpu::quantize(z.const_data_ptr<float>(), z.numel(), int(bits), int(codebook), uint64_t(seed),
                codes.mutable_data_ptr<uint8_t>());
  return codes;
}

at::Tensor pack_cpu(const at::Tensor& codes_in, int64_t bits) {
  TORCH_CHECK_VALUE(codes_in.scalar_type() == at::kByte, "codes must be uint8, got ", codes_in.scalar_type());
  check_bits(bits);
  check_cpu(codes_in, "codes");
  const at::Tensor codes = codes_in.contiguous();
  const int64_t n = codes.numel();
  at::Tensor words = at::empty({cpu::layout(n, int(bits), 0).num_words}, codes.options().dtype(at::kInt));
  cpu::pack(codes.const_data_ptr<uint8_t>(), n, int(bits), reinterpret_cast<uint32_t*>(words.mutable_data_ptr()));
  return words;
}

at::Tensor unpack_cpu(const at::Tensor& words_in, int64_t bits, c10::SymInt n_sym) {
  TORCH_CHECK_VALUE(words_in.scalar_type() == at::kInt, "words must be int32, got ", words_in.scalar_type());
  check_bits(bits);
  check_cpu(words_in, "words");
  const int64_t n = n_sym.guard_int(__FILE__, __LINE__);
  TORCH_CHECK_VALUE(n >= 0, "n must be >= 0, got ", n);
  const int64_t need = cpu::layout(n, int(bits), 0).num_words;
  TORCH_CHECK_VALUE(words_in.numel() == need, "words must hold bits*ceil(n/32) = ", need, " int32 values, got ",
                    words_in.numel());
  const at::Tensor words = words_in.contiguous();
  at::Tensor codes = at::empty({n}, words.options().dtype(at::kByte));
  cpu::unpack(reinterpret_cast<const uint32_t*>(words.const_data_ptr()), n, int(bits),
              codes.mutable_data_ptr<uint8_t>());
  return codes;
}

}  // namespace
}  // namespace tnq

TORCH_LIBRARY_IMPL(tnq, CPU, m) {
  m.impl("compress", &tnq::compress_cpu);
  m.impl("decompress", &tnq::decompress_cpu);
  m.impl("decompress_sum", &tnq::decompress_sum_cpu);
  m.impl("scale_truncate", &tnq::scale_truncate_cpu);
  m.impl("quantize", &tnq::quantize_cpu);
  m.impl("pack", &tnq::pack_cpu);
  m.impl("unpack", &tnq::unpack_cpu);
}

// ---- Python helpers for cross-checks (tests/test_constants.py) ----

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "tnq_kernels C++ backend: registers the CPU kernels of the tnq ops on import; helpers for tests";
  m.def("levels", [](int codebook, int bits) {
    tnq::check_codebook(codebook);
    tnq::check_bits(bits);
    const tnq::cpu::Tables& t = tnq::cpu::tables(codebook, bits);
    return std::vector<double>(t.c, t.c + t.s + 1);
  }, py::arg("codebook"), py::arg("bits"), "fp32 levels c_0..c_s of the C++ table (as Python floats)");
  m.def("inv_gaps", [](int codebook, int bits) {
    tnq::check_codebook(codebook);
    tnq::check_bits(bits);
    const tnq::cpu::Tables& t = tnq::cpu::tables(codebook, bits);
    return std::vector<double>(t.inv_gap, t.inv_gap + t.s);
  }, py::arg("codebook"), py::arg("bits"), "fp32 inverse level gaps of the C++ table (as Python floats)");
  m.def("lambert_w0", &tnq::cpu::lambert_w0, py::arg("x"));
  m.def("hash", [](uint64_t seed, uint64_t i) { return tnq::hash_index(tnq::seed_keys(seed), i); },
        py::arg("seed"), py::arg("i"), "H(seed, i): the 32-bit counter-based hash (seed, i as uint64)");
  m.def("layout", [](int64_t n, int bits, int64_t block_size) {
    const tnq::cpu::Layout l = tnq::cpu::layout(n, bits, block_size);
    return py::make_tuple(l.nblocks, l.codes_offset, l.payload_bytes);
  }, py::arg("n"), py::arg("bits"), py::arg("block_size"), "(nblocks, codes_offset, payload_bytes) for n elements");
  m.def("encode_at", [](const at::Tensor& x, int64_t first_group, double scale, int bits, int codebook,
                        uint64_t seed) {
    TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu() &&
                      x.numel() % 32 == 0, "x must be a contiguous CPU float32 tensor of whole 32-element groups");
    tnq::check_bits(bits);
    tnq::check_codebook(codebook);
    const int64_t ngroups = x.numel() / 32;
    at::Tensor words = at::empty({ngroups * bits}, x.options().dtype(at::kInt));
    tnq::cpu::encode_at(x.const_data_ptr<float>(), ngroups, first_group, float(scale), bits, codebook, seed,
                        reinterpret_cast<uint32_t*>(words.mutable_data_ptr()));
    return words;
  }, py::arg("x"), py::arg("first_group"), py::arg("scale"), py::arg("bits"), py::arg("codebook"), py::arg("seed"),
     "test hook: the fused quantize+pack of fp32 groups placed at global group index first_group");
  m.def("constants", [] {
    py::dict d;
    d["magic"] = py::bytes(reinterpret_cast<const char*>(tnq::kMagic), 4);
    d["version"] = int(tnq::kFormatVersion);
    d["header_bytes"] = tnq::kHeaderBytes;
    d["codes_align"] = tnq::kCodesAlign;
    d["flag_nonfinite"] = tnq::kFlagNonFinite;
    d["min_bits"] = tnq::kMinBits;
    d["max_bits"] = tnq::kMaxBits;
    d["max_block_size"] = tnq::kMaxBlockSize;
    d["offsets"] = py::make_tuple(tnq::kOffVersion, tnq::kOffBits, tnq::kOffCodebook, tnq::kOffDtype,
                                  tnq::kOffBlockSize, tnq::kOffFlags, tnq::kOffNumel, tnq::kOffReserved);
    py::dict ids;
    ids["tnq"] = int(tnq::kTnq);
    ids["tqsgd"] = int(tnq::kTqsgd);
    ids["nqsgd"] = int(tnq::kNqsgd);
    ids["qsgd"] = int(tnq::kQsgd);
    d["codebook_ids"] = ids;
    py::dict dts;
    dts["float32"] = int(tnq::kFloat32);
    dts["float16"] = int(tnq::kFloat16);
    dts["bfloat16"] = int(tnq::kBFloat16);
    d["dtype_ids"] = dts;
    d["tnq_a"] = tnq::kTnqA;
    d["fmix_c1"] = tnq::kFmixC1;
    d["fmix_c2"] = tnq::kFmixC2;
    d["seed_salt_lo"] = tnq::kSeedSaltLo;
    d["seed_salt_hi"] = tnq::kSeedSaltHi;
    d["uniform_bits"] = tnq::kUniformBits;
    return d;
  }, "the constants of csrc/tnq_constants.h, for tests/test_constants.py");
}
