// Argument checks and the wire-format header, shared by the CPU (csrc/ops.cpp) and CUDA (csrc/cuda/bindings.cpp)
// bindings so both raise the same ValueErrors. Host code only: it needs ATen for the error macros.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "tnq_constants.h"

namespace tnq {

// ---- arguments: ValueError naming the argument, the value and what is accepted ----

inline int dtype_id_of(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kFloat: return kFloat32;
    case at::kHalf: return kFloat16;
    case at::kBFloat16: return kBFloat16;
    default: TORCH_CHECK_VALUE(false, name, " must be float32, float16 or bfloat16, got ", t);
  }
  return -1;
}

inline void check_bits(int64_t bits) {
  TORCH_CHECK_VALUE(bits >= kMinBits && bits <= kMaxBits, "bits must be an int in [", kMinBits, ", ", kMaxBits,
                    "] (2-5 are the fast paths), got ", bits);
}

inline void check_block_size(int64_t block_size) {
  TORCH_CHECK_VALUE(block_size >= 0 && block_size % 32 == 0 && block_size <= kMaxBlockSize,
                    "block_size must be 0 (one scale per tensor) or a positive multiple of 32 up to 2^30, got ",
                    block_size);
}

inline void check_codebook(int64_t codebook) {
  TORCH_CHECK_VALUE(codebook >= 0 && codebook < kNumCodebooks,
                    "codebook must be an id 0-15 (0 tnq, 1 tqsgd, 2 nqsgd, 3 qsgd, 4 qsgd_l2, 5 nuqsgd_l2, "
                    "6-14 rtnq1-rtnq256, 15 tnq_max), got ", codebook);
}

inline void check_rounding(int64_t rounding) {
  TORCH_CHECK_VALUE(rounding >= 0 && rounding < kNumRoundings,
                    "rounding must be one of 'stochastic' (0), 'nearest' (1), got ", rounding);
}

// The checks every compress-like op starts with; returns the dtype id of x.
inline int check_compress_args(const at::Tensor& x, int64_t bits, int64_t block_size, int64_t codebook) {
  const int dt = dtype_id_of(x.scalar_type(), "x");
  check_bits(bits);
  check_block_size(block_size);
  check_codebook(codebook);
  return dt;
}

// A payload tensor before its header is read: 1-D uint8, at least a header long.
inline void check_payload_tensor(const at::Tensor& p, const std::string& name) {
  TORCH_CHECK_VALUE(p.scalar_type() == at::kByte && p.dim() == 1, name,
                    " must be a 1-D uint8 tensor (a tnq payload), got ", p.scalar_type(), " with shape ", p.sizes());
  TORCH_CHECK_VALUE(p.numel() >= kHeaderBytes, name, " length: ", p.numel(), " bytes is shorter than the ",
                    kHeaderBytes, "-byte TNQ header");
}

// unpack's n and words: returns n.
inline int64_t check_unpack_args(const at::Tensor& words, int64_t bits, const c10::SymInt& n_sym) {
  TORCH_CHECK_VALUE(words.scalar_type() == at::kInt, "words must be int32, got ", words.scalar_type());
  check_bits(bits);
  const int64_t n = n_sym.guard_int(__FILE__, __LINE__);
  TORCH_CHECK_VALUE(n >= 0, "n must be >= 0, got ", n);
  const int64_t need = bits * ((n + 31) / 32);
  TORCH_CHECK_VALUE(words.numel() == need, "words must hold bits*ceil(n/32) = ", need, " int32 values, got ",
                    words.numel());
  return n;
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

// Writes the kHeaderBytes header bytes of h to p (reserved bytes zero).
inline void write_header(uint8_t* p, const Header& h) {
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

// Validates the header bytes `head` of a payload of `len` bytes exactly as tnq_kernels.format.parse_header does
// (same field names), before any data is touched, so a corrupted or truncated payload is never read out of bounds.
inline Header parse_header(const uint8_t* head, int64_t len, const std::string& name) {
  TORCH_CHECK_VALUE(std::memcmp(head, kMagic, 4) == 0, name, " magic: expected b'TNQK', got bytes ", int(head[0]),
                    ",", int(head[1]), ",", int(head[2]), ",", int(head[3]), " (not a tnq_kernels payload)");
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
  TORCH_CHECK_VALUE(h.codebook < kNumCodebooks, name, " codebook: id must be 0-15 (0 tnq, 1 tqsgd, 2 nqsgd, 3 qsgd, 4 qsgd_l2, 5 nuqsgd_l2, 6-14 rtnq1-rtnq256, 15 tnq_max), got ",
                    h.codebook);
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

inline void check_shape(const Header& h, c10::IntArrayRef shape, const std::string& name) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    TORCH_CHECK_VALUE(d >= 0, "shape ", shape, " has a negative dimension");
    numel *= d;
  }
  TORCH_CHECK_VALUE(numel == h.numel, "shape ", shape, " holds ", numel, " elements but ", name, " encodes ",
                    h.numel);
}

// Bytes [first, last) that a tensor's elements span (an empty range for an empty tensor).
inline std::pair<uintptr_t, uintptr_t> byte_span(const at::Tensor& t) {
  if (t.numel() == 0) return {0, 0};
  int64_t lo = 0, hi = 0;
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t reach = (t.size(d) - 1) * t.stride(d);
    (reach < 0 ? lo : hi) += reach;
  }
  const uintptr_t base = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const int64_t item = int64_t(t.element_size());
  return {base + uintptr_t(lo * item), base + uintptr_t((hi + 1) * item)};
}

// The `out` of decompress_into / decompress_sum_into: a contiguous fp32/fp16/bf16 tensor of the payloads' numel,
// on their device, sharing no byte with any payload (the kernels read payloads while writing out). Returns its
// dtype id. `numel` is the payloads' element count (their headers are validated first). Same checks, order and
// wording as tnq_kernels/checks.py check_out.
inline int check_out(const at::Tensor& out, int64_t numel, at::TensorList payloads) {
  const int dt = dtype_id_of(out.scalar_type(), "out");
  TORCH_CHECK_VALUE(out.is_contiguous(), "out must be contiguous, got strides ", out.strides(), " for shape ",
                    out.sizes());
  TORCH_CHECK_VALUE(out.numel() == numel, "out holds ", out.numel(), " elements (shape ", out.sizes(),
                    ") but the payloads encode ", numel);
  const auto o = byte_span(out);
  for (size_t w = 0; w < payloads.size(); ++w) {
    TORCH_CHECK_VALUE(out.device() == payloads[w].device(), "out is on ", out.device(), " but payload ", w,
                      " is on ", payloads[w].device());
    const auto p = byte_span(payloads[w]);
    TORCH_CHECK_VALUE(o.first >= o.second || p.first >= p.second || o.second <= p.first || p.second <= o.first,
                      "out overlaps the memory of payload ", w, ": decode into a separate tensor");
  }
  return dt;
}

// decompress_sum's list and weights.
inline void check_sum_args(at::TensorList payloads, const std::optional<at::ArrayRef<double>>& weights) {
  TORCH_CHECK_VALUE(!payloads.empty(), "payloads must hold at least one payload, got an empty list");
  TORCH_CHECK_VALUE(!weights.has_value() || int64_t(weights->size()) == int64_t(payloads.size()),
                    "weights must have one entry per payload (", payloads.size(), "), got ",
                    weights.has_value() ? int64_t(weights->size()) : 0);
}

}  // namespace tnq
