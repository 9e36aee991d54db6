// Kernels that walk the input block by block: shared by compress.cu (codes out) and scale_truncate.cu (z out).
//   fused_blocks_kernel   block length <= kFusedMaxBlock: one CTA per scale block reduces it (job 1) and encodes
//                         it (jobs 1-3); the second read of the block is served by L1/L2.
//   partials_kernel       longer blocks (B = 0: the whole tensor): fp64 partial pair per kTile-element tile,
//   block_scale_kernel    then one CTA per block reduces its tiles' partials in a fixed order,
//   tiles_kernel          then one CTA per tile encodes it with its block's scale.
// Every reduction has a fixed order for a given launch configuration, so results never depend on scheduling.
#pragma once
#include "common.cuh"

namespace tnq {
namespace cuda {
namespace dev {
// Internal linkage: compress.cu and scale_truncate.cu both include this header, and each must get its own kernels
// and host stubs (a non-template __global__ with external linkage would be defined twice at link time).
namespace {

// The level table a kernel keeps in shared memory: the O(1) index for the fast widths, the search table otherwise,
// none for the z output of scale_truncate.
struct NoTable {};
template <int BITS, bool ZOUT>
using TableFor = std::conditional_t<ZOUT, NoTable, std::conditional_t<(BITS != 0), FastTable, SharedTable>>;

template <int BITS, bool ZOUT>
__device__ __forceinline__ void load_tables(TableFor<BITS, ZOUT>& st, const LevelTable& tab, int bits) {
  if constexpr (!ZOUT) {
    if constexpr (BITS != 0) load_fast_table(st, tab);
    else load_table(st, tab, bits);
  }
}

// Dynamic shared memory of the encode kernels: kStageBytes per warp (none for the z output).
template <bool ZOUT>
inline size_t stage_bytes(int64_t threads) {
  return ZOUT ? 0 : size_t(threads / 32) * size_t(kStageBytes);
}

// One CTA per block: its reduction for the scale rule RULE (a template parameter, so the loop holds only its own
// sums), the scale, then the encode (or z) of the block.
template <int DT, int BITS, int RULE, bool ZOUT>
__global__ void __launch_bounds__(kThreads)
    fused_blocks_kernel(const typename Elem<DT>::T* __restrict__ x, int64_t n, int64_t block_len, int bits,
                        SeedKeys keys, int rounding, const __grid_constant__ LevelTable tab,
                        float* __restrict__ scales, uint32_t* __restrict__ flags, uint32_t* __restrict__ words,
                        float* __restrict__ z) {
  __shared__ TableFor<BITS, ZOUT> st;
  __shared__ double red[kReduceSmem];
  extern __shared__ __align__(16) uint8_t stage[];
  load_tables<BITS, ZOUT>(st, tab, bits);
  const int64_t blk = blockIdx.x;
  const int64_t start = blk * block_len;
  const int64_t end = start + block_len < n ? start + block_len : n;
  const float scale = finish_scale(reduce_rule<DT, RULE>(x, start, end, red), end - start, RULE);
  if (threadIdx.x == 0) {
    scales[blk] = scale;
    if (flags != nullptr && !isfinite(scale)) *flags = kFlagNonFinite;
  }
  if constexpr (ZOUT) {
    truncate_range<DT>(x, start, end, scale, tab.c[0], tab.c[(1 << bits) - 1], z);
  } else {
    encode_range<DT, BITS>(x, start, end, scale, keys, rounding == kNearest, st, tab, bits, words,
                           stage + (threadIdx.x >> 5) * kStageBytes);
  }
}

// Tile `tile` of the tiled path: its block and its element range [start, end) (empty for the padding tiles of a
// short last block).
struct TileRange {
  int64_t blk, start, end;
};
__device__ __forceinline__ TileRange tile_range(int64_t tile, int64_t tiles_per_block, int64_t block_len,
                                                int64_t n) {
  const int64_t blk = tile / tiles_per_block;
  const int64_t bstart = blk * block_len;
  const int64_t bend = bstart + block_len < n ? bstart + block_len : n;
  int64_t start = bstart + (tile - blk * tiles_per_block) * kTile;
  int64_t end = start + kTile < bend ? start + kTile : bend;
  if (start > end) start = end;
  return TileRange{blk, start, end};
}

template <int DT>
__global__ void __launch_bounds__(kThreads)
    partials_kernel(const typename Elem<DT>::T* __restrict__ x, int64_t n, int64_t block_len,
                    int64_t tiles_per_block, int rule, double* __restrict__ partials) {
  __shared__ double red[kReduceSmem];
  const TileRange r = tile_range(blockIdx.x, tiles_per_block, block_len, n);
  const ScaleSums v = reduce_scale<DT>(x, r.start, r.end, rule, red);  // 0 for an empty tile: neutral for all
  if (threadIdx.x == 0) {
    partials[2 * int64_t(blockIdx.x)] = v.s1;
    partials[2 * int64_t(blockIdx.x) + 1] = v.s2;
  }
}

__global__ void __launch_bounds__(kThreads)
    block_scale_kernel(const double* __restrict__ partials, int64_t n, int64_t block_len, int64_t tiles_per_block,
                       int rule, float* __restrict__ scales, uint32_t* __restrict__ flags) {
  __shared__ double red[kReduceSmem];
  const int64_t blk = blockIdx.x;
  const double* p = partials + 2 * blk * tiles_per_block;  // (s1, s2) pairs
  const bool max_rule = rule == kScaleMaxAbs;
  double v = 0.0, v2 = 0.0;
  for (int64_t j = threadIdx.x; j < tiles_per_block; j += blockDim.x) {
    v = max_rule ? nanmax(v, p[2 * j]) : __dadd_rn(v, p[2 * j]);
    v2 = __dadd_rn(v2, p[2 * j + 1]);
  }
  if (max_rule)
    v = block_reduce<true>(v, red);  // v2 stays 0: max partials carry no second sum
  else
    block_reduce_sum2(v, v2, red);
  const int64_t start = blk * block_len;
  const int64_t count = (start + block_len < n ? start + block_len : n) - start;
  const float scale = finish_scale(ScaleSums{v, v2}, count, rule);
  if (threadIdx.x == 0) {
    scales[blk] = scale;
    if (flags != nullptr && !isfinite(scale)) *flags = kFlagNonFinite;
  }
}

template <int DT, int BITS, bool ZOUT>
__global__ void __launch_bounds__(kThreads)
    tiles_kernel(const typename Elem<DT>::T* __restrict__ x, int64_t n, int64_t block_len, int64_t tiles_per_block,
                 int bits, SeedKeys keys, int rounding, const __grid_constant__ LevelTable tab,
                 const float* __restrict__ scales,
                 uint32_t* __restrict__ words, float* __restrict__ z) {
  __shared__ TableFor<BITS, ZOUT> st;
  extern __shared__ __align__(16) uint8_t stage[];
  load_tables<BITS, ZOUT>(st, tab, bits);
  const TileRange r = tile_range(blockIdx.x, tiles_per_block, block_len, n);
  if (r.start >= r.end) return;  // after the table's __syncthreads: the whole CTA leaves together
  const float scale = scales[r.blk];
  if constexpr (ZOUT) {
    truncate_range<DT>(x, r.start, r.end, scale, tab.c[0], tab.c[(1 << bits) - 1], z);
  } else {
    encode_range<DT, BITS>(x, r.start, r.end, scale, keys, rounding == kNearest, st, tab, bits, words,
                           stage + (threadIdx.x >> 5) * kStageBytes);
  }
}

}  // namespace
}  // namespace dev

// Host: runs job 1 (and, with ZOUT = false, jobs 2-3) over all blocks. scales/flags/words/z as in the kernels;
// rounding: a RoundingId (ignored with ZOUT).
template <bool ZOUT>
const char* run_blocks(const void* x, int dtype_id, int64_t n, int bits, int64_t block_size, int rule,
                       SeedKeys keys, int rounding, const LevelTable& tab, float* scales, uint32_t* flags,
                       uint32_t* words, float* z, void* workspace, cudaStream_t s) {
  if (n == 0) return launch_status();
  const int64_t block_len = effective_block_len(n, block_size);
  const int64_t nblocks = num_blocks(n, block_size);
  if (nblocks > 0x7fffffff) return kGridTooLarge;
  // z output needs no specialisation on the bit width; a code output takes the O(1) index (BITS = 2..5) only where
  // the table has one (tab.bins > 0), else the runtime-width kernels (BITS = 0) with the binary search
  const int fast_bits = tab.bins > 0 ? bits : 0;
  auto dispatch = [&](auto&& fn) {
    if constexpr (ZOUT) return dispatch_dtype(dtype_id, fn);
    else return dispatch_dtype_bits(dtype_id, fast_bits, fn);
  };
  if (block_len <= kFusedMaxBlock) {
    return dispatch([&](auto dt, auto b) {
      constexpr int DT = decltype(dt)::value, BITS = decltype(b)::value;
      // one warp per kChunk elements of the block, at most kThreads
      int64_t threads = (block_len + dev::kChunk - 1) / dev::kChunk * 32;
      threads = threads > dev::kThreads ? dev::kThreads : threads;
      const size_t smem = dev::stage_bytes<ZOUT>(threads);
      return dispatch_rule(rule, [&](auto rl) {
        constexpr int RULE = decltype(rl)::value;
        dev::fused_blocks_kernel<DT, BITS, RULE, ZOUT><<<unsigned(nblocks), unsigned(threads), smem, s>>>(
            static_cast<const typename dev::Elem<DT>::T*>(x), n, block_len, bits, keys, rounding, tab, scales, flags,
            words, z);
        return launch_status();
      });
    });
  }
  const int64_t tpb = (block_len + kTile - 1) / kTile;
  const int64_t ntiles = nblocks * tpb;
  if (ntiles > 0x7fffffff) return kGridTooLarge;
  double* partials = static_cast<double*>(workspace);
  return dispatch([&](auto dt, auto b) {
    constexpr int DT = decltype(dt)::value, BITS = decltype(b)::value;
    using T = typename dev::Elem<DT>::T;
    dev::partials_kernel<DT><<<unsigned(ntiles), dev::kThreads, 0, s>>>(static_cast<const T*>(x), n, block_len,
                                                                         tpb, rule, partials);
    dev::block_scale_kernel<<<unsigned(nblocks), dev::kThreads, 0, s>>>(partials, n, block_len, tpb, rule,
                                                                         scales, flags);
    dev::tiles_kernel<DT, BITS, ZOUT><<<unsigned(ntiles), dev::kThreads, dev::stage_bytes<ZOUT>(dev::kThreads), s>>>(
        static_cast<const T*>(x), n, block_len, tpb, bits, keys, rounding, tab, scales, words, z);
    return launch_status();
  });
}

}  // namespace cuda
}  // namespace tnq
