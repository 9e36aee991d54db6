// Host program of tests/test_cuda_host.py: runs the per-element functions of the CUDA encode (csrc/cuda/common.cuh,
// csrc/bin_index.h, csrc/tnq_constants.h, all __host__ __device__) on the CPU, compiled by nvcc, so their index
// logic runs somewhere before a GPU does. Reads commands on stdin, writes answers on stdout (hex, one per line).
//
//   codes BITS SEED START N          then 2^BITS levels c_k, 2^BITS - 1 inverse gaps (fp32 bit patterns, hex),
//                                    then N values z (fp32 bits, hex): prints the bin count, then the code of each
//                                    z as element START + j of a range starting at START (fast_code, with m from
//                                    range_keys / range_key / pair_hash as encode_range computes it), its 16
//                                    random bits m and its code with rounding to the nearest level
//   pack V BITS                      then 1024 codes (hex): the bit planes of the 32 groups as encode_range
//                                    stages and packs them for 16-byte vectors of V elements (32 · BITS words)
#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda/common.cuh"

using namespace tnq;
using namespace tnq::cuda;
using namespace tnq::cuda::dev;

static float read_f32() {
  unsigned u = 0;
  if (std::scanf("%x", &u) != 1) std::exit(2);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static void codes_cmd() {
  int bits = 0;
  unsigned long long seed = 0;
  long long start = 0, n = 0;
  if (std::scanf("%d %llu %lld %lld", &bits, &seed, &start, &n) != 4) std::exit(2);
  const int levels = 1 << bits, s = levels - 1;
  LevelTable tab{};
  for (int k = 0; k < levels; ++k) tab.c[k] = read_f32();
  for (int k = 0; k < s; ++k) tab.inv_gap[k] = read_f32();
  fill_bins(tab, make_gpu_bins(tab.c, tab.inv_gap, s), bits);
  std::printf("%d\n", tab.bins);
  static FastTable ft;  // as load_fast_table fills it
  for (int j = 0; j <= tab.bins; ++j) ft.bin[j] = bin_entry16(tab.bin[j]);
  for (int k = 0; k < 32; ++k) ft.level[k] = level_entry(tab.level16[k], uint32_t(k));
  const RangeKeys rk = range_keys(seed_keys(seed), start);
  for (long long j = 0; j < n; ++j) {
    const float z = read_f32();
    const int64_t i = start + j;
    const int64_t v = i & ~int64_t(7);  // the 16-byte vector (of 4 or 8 elements) holding i, as encode_range
    const uint32_t h = pair_hash(range_key(rk, v), uint32_t(uint64_t(v) >> 1) | uint32_t((i - v) >> 1));
    const uint32_t m = (i & 1) ? h >> 16 : h & 0xFFFFu;
    const uint32_t code = tab.bins > 0 ? fast_code(z, m, ft, tab.bin_mul, tab.bin_add, tab.bin_bias, false)
                                       : 0xFFFFFFFFu;
    const uint32_t near = tab.bins > 0 ? fast_code(z, m, ft, tab.bin_mul, tab.bin_add, tab.bin_bias, true)
                                       : 0xFFFFFFFFu;
    std::printf("%x %x %x\n", code, m, near);
  }
}

template <int V>
static void pack_v(int bits) {
  std::vector<unsigned> code(kChunk);
  for (int e = 0; e < kChunk; ++e)
    if (std::scanf("%x", &code[e]) != 1) std::exit(2);
  alignas(16) uint8_t stage[kStageBytes];
  std::memset(stage, 0xEE, sizeof(stage));
  constexpr int M = kChunk / (32 * V);
  for (int lane = 0; lane < 32; ++lane)  // the stores of encode_range: lane, vector m, slot t
    for (int m = 0; m < M; ++m)
      for (int t = 0; t < V; ++t) {
        const int at = stage_lane<V>(lane, m & 1, t >> 2) + 32 * V * m + 4 * t;  // as encode_range stores
        if (at != stage_byte<V>(lane, m, t)) std::exit(3);
        stage[at] = uint8_t(code[m * 32 * V + lane * V + t]);
      }
  for (int lane = 0; lane < 32; ++lane) {  // the loads and the pack of group `lane`
    uint32_t d[8];
    std::memcpy(d, stage + 16 * stage_half(lane, 0), 16);
    std::memcpy(d + 4, stage + 16 * stage_half(lane, 1), 16);
    for (int p = 0; p < bits; ++p) std::printf("%x\n", stage_plane(d, p));
  }
}

int main() {
  char cmd[16];
  while (std::scanf("%15s", cmd) == 1) {
    if (std::strcmp(cmd, "codes") == 0) {
      codes_cmd();
    } else if (std::strcmp(cmd, "pack") == 0) {
      int v = 0, bits = 0;
      if (std::scanf("%d %d", &v, &bits) != 2) return 2;
      if (v == 4) pack_v<4>(bits); else pack_v<8>(bits);
    } else {
      return 2;
    }
  }
  return 0;
}
