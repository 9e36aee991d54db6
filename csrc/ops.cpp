// Boundary of the C++ backend: argument and header validation, allocation, and the CPU registrations of the
// nine `tnq` ops. The schemas are defined once, in tnq_kernels/ops.py, before this library is loaded; here we
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
#include "validate.h"

namespace tnq {
namespace {

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got device ", t.device());
}

// Validates a payload tensor and its header (csrc/validate.h) before any data is touched.
Header read_header(const at::Tensor& payload, const std::string& name) {
  check_payload_tensor(payload, name);
  check_cpu(payload, name.c_str());
  uint8_t head[kHeaderBytes];
  if (payload.is_contiguous()) {
    std::memcpy(head, payload.const_data_ptr<uint8_t>(), kHeaderBytes);
  } else {
    const at::Tensor h = payload.slice(0, 0, kHeaderBytes).contiguous();
    std::memcpy(head, h.const_data_ptr<uint8_t>(), kHeaderBytes);
  }
  return parse_header(head, payload.numel(), name);
}

cpu::PayloadView view_of(const at::Tensor& payload, const Header& h) {
  const uint8_t* base = payload.const_data_ptr<uint8_t>();
  return cpu::PayloadView{base + kHeaderBytes, base + codes_offset(h.numel, h.block_size), h.bits, h.codebook,
                          h.block_size};
}

// ---- the nine ops (CPU kernels) ----

at::Tensor compress_cpu(const at::Tensor& x_in, int64_t bits, int64_t block_size, int64_t codebook, int64_t seed,
                        int64_t rounding) {
  const int dt = check_compress_args(x_in, bits, block_size, codebook);
  check_rounding(rounding);
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
                                 int(rounding), scales, words);
  write_header(p, Header{int(bits), int(codebook), dt, block_size, bad ? kFlagNonFinite : 0u, n});
  return out;
}

std::string payload_name(size_t w, bool single) {
  return single ? std::string("payload") : "payloads[" + std::to_string(w) + "]";
}

// The one decode path: decompress, decompress_sum and their _into forms all end here, with `out` allocated or given.
void decode_sum_into(at::TensorList payloads, std::optional<at::ArrayRef<double>> weights, const at::Tensor& out,
                     bool single) {
  check_sum_args(payloads, weights);
  std::vector<at::Tensor> keep;  // contiguous copies must outlive the kernel
  std::vector<cpu::PayloadView> views;
  int64_t n = 0;
  for (size_t w = 0; w < payloads.size(); ++w) {
    const std::string name = payload_name(w, single);
    const Header h = read_header(payloads[w], name);
    TORCH_CHECK_VALUE(w == 0 || h.numel == n, name, " encodes ", h.numel, " elements but ", payload_name(0, single),
                      " encodes ", n);
    n = h.numel;
    keep.push_back(payloads[w].contiguous());
    views.push_back(view_of(keep.back(), h));
  }
  const int out_dt = check_out(out, n, payloads);
  std::vector<float> wf;
  if (weights.has_value())
    for (double v : *weights) wf.push_back(static_cast<float>(v));  // the reference multiplies by an fp32 weight
  if (n > 0)
    cpu::decompress_sum(views.data(), weights.has_value() ? wf.data() : nullptr, int64_t(views.size()), n, out_dt,
                        out.mutable_data_ptr());
}

at::Tensor decode_sum(at::TensorList payloads, std::optional<at::ArrayRef<double>> weights,
                      c10::SymIntArrayRef shape_sym, at::ScalarType dtype, bool single) {
  check_sum_args(payloads, weights);
  dtype_id_of(dtype, "dtype");
  const c10::IntArrayRef shape = C10_AS_INTARRAYREF_SLOW(shape_sym);
  for (size_t w = 0; w < payloads.size(); ++w) {  // shape errors name `shape`, before anything is allocated
    const std::string name = payload_name(w, single);
    check_shape(read_header(payloads[w], name), shape, name);
  }
  at::Tensor out = at::empty(shape, payloads[0].options().dtype(dtype));
  decode_sum_into(payloads, weights, out, single);
  return out;
}

at::Tensor decompress_sum_cpu(at::TensorList payloads, std::optional<at::ArrayRef<double>> weights,
                              c10::SymIntArrayRef shape, at::ScalarType dtype) {
  return decode_sum(payloads, weights, shape, dtype, false);
}

at::Tensor decompress_cpu(const at::Tensor& payload, c10::SymIntArrayRef shape, at::ScalarType dtype) {
  return decode_sum(at::TensorList(&payload, 1), std::nullopt, shape, dtype, true);
}

void decompress_into_cpu(const at::Tensor& payload, const at::Tensor& out) {
  decode_sum_into(at::TensorList(&payload, 1), std::nullopt, out, true);
}

void decompress_sum_into_cpu(at::TensorList payloads, std::optional<at::ArrayRef<double>> weights,
                             const at::Tensor& out) {
  decode_sum_into(payloads, weights, out, false);
}

std::tuple<at::Tensor, at::Tensor> scale_truncate_cpu(const at::Tensor& x_in, int64_t bits, int64_t block_size,
                                                      int64_t codebook) {
  const int dt = check_compress_args(x_in, bits, block_size, codebook);
  check_cpu(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.numel();
  at::Tensor scales = at::empty({num_blocks(n, block_size)}, x.options().dtype(at::kFloat));
  at::Tensor z = at::empty({n}, x.options().dtype(at::kFloat));
  cpu::scale_truncate(x.const_data_ptr(), dt, n, int(bits), block_size, int(codebook),
                      scales.mutable_data_ptr<float>(), z.mutable_data_ptr<float>());
  return {scales, z};
}

at::Tensor quantize_cpu(const at::Tensor& z_in, int64_t bits, int64_t codebook, int64_t seed, int64_t rounding) {
  TORCH_CHECK_VALUE(z_in.scalar_type() == at::kFloat, "z must be float32 (the output of scale_truncate), got ",
                    z_in.scalar_type());
  check_bits(bits);
  check_codebook(codebook);
  check_rounding(rounding);
  check_cpu(z_in, "z");
  const at::Tensor z = z_in.contiguous();
  at::Tensor codes = at::empty({z.numel()}, z.options().dtype(at::kByte));
  cpu::quantize(z.const_data_ptr<float>(), z.numel(), int(bits), int(codebook), uint64_t(seed), int(rounding),
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
  const int64_t n = check_unpack_args(words_in, bits, n_sym);
  check_cpu(words_in, "words");
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
  m.impl("decompress_into", &tnq::decompress_into_cpu);
  m.impl("decompress_sum_into", &tnq::decompress_sum_into_cpu);
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
  m.def("simd_path", [] { return std::string(tnq::cpu::simd_path()); },
        "the CPU kernels' vector loops in this process: avx512, avx2 or portable");
  m.def("hash", [](uint64_t seed, uint64_t j) { return tnq::hash_pair(tnq::seed_keys(seed), j); },
        py::arg("seed"), py::arg("j"), "H(seed, j): the 32-bit word of pair j (seed, j as uint64), SPEC v1.2");
  m.def("bits16", [](uint64_t seed, uint64_t i) { return tnq::bits16(tnq::seed_keys(seed), i); },
        py::arg("seed"), py::arg("i"), "m: the 16 random bits of element i (seed, i as uint64)");
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
    ids["qsgd_l2"] = int(tnq::kQsgdL2);
    ids["nuqsgd_l2"] = int(tnq::kNuqsgdL2);
    for (int j = 0; j < tnq::kNumRtnq; ++j) ids[("rtnq" + std::to_string(tnq::rtnq_clients(tnq::kRtnq1 + j))).c_str()] = tnq::kRtnq1 + j;
    ids["tnq_max"] = int(tnq::kTnqMax);
    d["codebook_ids"] = ids;
    py::dict rules;
    for (int c = 0; c < tnq::kNumCodebooks; ++c) rules[py::int_(c)] = tnq::scale_rule(c);
    d["scale_rules"] = rules;
    py::dict dts;
    dts["float32"] = int(tnq::kFloat32);
    dts["float16"] = int(tnq::kFloat16);
    dts["bfloat16"] = int(tnq::kBFloat16);
    d["dtype_ids"] = dts;
    d["tnq_a"] = tnq::kTnqA;
    d["tnq_max_alpha"] = tnq::kTnqMaxAlpha;
    d["fmix_c1"] = tnq::kFmixC1;
    d["fmix_c2"] = tnq::kFmixC2;
    d["seed_salt_lo"] = tnq::kSeedSaltLo;
    d["seed_salt_hi"] = tnq::kSeedSaltHi;
    d["uniform_bits"] = tnq::kUniformBits;
    py::dict roundings;
    roundings["stochastic"] = int(tnq::kStochastic);
    roundings["nearest"] = int(tnq::kNearest);
    d["rounding_ids"] = roundings;
    d["num_roundings"] = tnq::kNumRoundings;
    d["nearest_u"] = tnq::kNearestU;
    return d;
  }, "the constants of csrc/tnq_constants.h, for tests/test_constants.py");
}
