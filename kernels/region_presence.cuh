// Block geometry and per-thread work of the region-presence kernel.
//
// Everything here is __host__ __device__ and free of CUDA types outside the
// device-only load path, so tests/cpp can replay a launch block by block on
// the CPU and check the index arithmetic on machines without a GPU.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FSFM_HD __host__ __device__
#define FSFM_UNROLL _Pragma("unroll")
#else
#define FSFM_HD
#define FSFM_UNROLL
#endif

namespace fsfm {
namespace cuda {
namespace presence {

// One block owns one strip of `patch` pixel rows and at most kMaxTileCols
// patch columns, so its shared-memory accumulator stays small (16 KiB) even
// for very wide maps with tiny patches.
constexpr std::int64_t kMaxTileCols = 4096;
constexpr int kMaxThreads = 256;

struct Geometry {
  std::int64_t batch, height, width, patch;
  std::int64_t grid_h, grid_w;  // patches along H and along W
  std::int64_t tile_cols;       // patch columns per block
  std::int64_t num_tiles;       // blocks along W
  int vec;                      // bytes per load: 16, 8, 4, 2 or 1
  int block_x;                  // threads across a strip row (one load each)
  int block_y;                  // threads down the strip
};

struct Block {
  std::int64_t b, row;   // image and patch row
  std::int64_t col0;     // first patch column of the tile
  std::int64_t ncols;    // patch columns in this tile
};

// Fills *g and returns true when the shape is launchable. The widest load
// that keeps every row start aligned is used; a load may straddle two
// patches (patch % vec != 0), which presence_thread handles.
FSFM_HD inline bool make_geometry(std::int64_t batch, std::int64_t height,
                                  std::int64_t width, std::int64_t patch,
                                  std::uintptr_t address, Geometry* g) {
  if (batch < 0 || height < 0 || width < 0 || patch <= 0) return false;
  if (height % patch != 0 || width % patch != 0) return false;
  g->batch = batch;
  g->height = height;
  g->width = width;
  g->patch = patch;
  g->grid_h = height / patch;
  g->grid_w = width / patch;
  g->vec = 1;
  for (int v = 16; v > 1; v /= 2) {
    if (width % v == 0 && address % static_cast<std::uintptr_t>(v) == 0) {
      g->vec = v;
      break;
    }
  }
  // kMaxTileCols is a multiple of 16, so tiles after the first start on a
  // load boundary whatever vec is.
  g->tile_cols = g->grid_w <= kMaxTileCols ? g->grid_w : kMaxTileCols;
  g->num_tiles =
      g->tile_cols == 0 ? 0 : (g->grid_w + g->tile_cols - 1) / g->tile_cols;
  const std::int64_t tile_vecs = g->tile_cols * patch / g->vec;
  const std::int64_t bx = tile_vecs < kMaxThreads ? tile_vecs : kMaxThreads;
  g->block_x = bx < 1 ? 1 : static_cast<int>(bx);
  const std::int64_t by = kMaxThreads / g->block_x;
  g->block_y = static_cast<int>(by < patch ? (by < 1 ? 1 : by) : patch);
  return true;
}

FSFM_HD inline std::int64_t num_blocks(const Geometry& g) {
  return g.batch * g.grid_h * g.num_tiles;
}

FSFM_HD inline Block block_at(const Geometry& g, std::int64_t index) {
  Block blk;
  const std::int64_t tile = index % g.num_tiles;
  const std::int64_t rest = index / g.num_tiles;
  blk.row = rest % g.grid_h;
  blk.b = rest / g.grid_h;
  blk.col0 = tile * g.tile_cols;
  const std::int64_t left = g.grid_w - blk.col0;
  blk.ncols = left < g.tile_cols ? left : g.tile_cols;
  return blk;
}

// Labels above 31 fold into bit 31 instead of shifting out of range.
FSFM_HD inline std::uint32_t label_bit(std::uint32_t label) {
  return 1u << (label < 31u ? label : 31u);
}

template <int V>
struct Words {
  std::uint32_t w[(V + 3) / 4];
  FSFM_HD std::uint32_t byte(int i) const {
    return (w[i >> 2] >> ((i & 3) * 8)) & 0xFFu;
  }
};

template <int V>
FSFM_HD inline Words<V> load(const std::uint8_t* src) {
  Words<V> out;
#if defined(__CUDA_ARCH__)
  if constexpr (V == 16) {
    const uint4 q = *reinterpret_cast<const uint4*>(src);
    out.w[0] = q.x; out.w[1] = q.y; out.w[2] = q.z; out.w[3] = q.w;
  } else if constexpr (V == 8) {
    const uint2 q = *reinterpret_cast<const uint2*>(src);
    out.w[0] = q.x; out.w[1] = q.y;
  } else if constexpr (V == 4) {
    out.w[0] = *reinterpret_cast<const std::uint32_t*>(src);
  } else if constexpr (V == 2) {
    out.w[0] = *reinterpret_cast<const std::uint16_t*>(src);
  } else {
    out.w[0] = *src;
  }
#else
  // Host replay: memcpy is the aliasing-safe spelling of the same load
  // (little-endian, as on every CUDA host).
  out.w[0] = 0;
  std::memcpy(out.w, src, V);
#endif
  return out;
}

// ORs the label bits of the loads this thread owns: load columns tx, tx+bx, ...
// of the tile, rows ty, ty+by, ... of the strip. Each load column is reduced
// over its rows in registers first, so or_into (a shared-memory atomicOr on
// the GPU) runs once per (load column, patch) pair rather than per pixel.
template <int V, class OrInto>
FSFM_HD inline void presence_thread(const std::uint8_t* parsing,
                                    const Geometry& g, const Block& blk,
                                    int tx, int ty, OrInto or_into) {
  const std::int64_t nvec = blk.ncols * g.patch / V;
  const std::uint8_t* strip =
      parsing + (blk.b * g.height + blk.row * g.patch) * g.width +
      blk.col0 * g.patch;
  for (std::int64_t j = tx; j < nvec; j += g.block_x) {
    std::uint32_t acc[V];
FSFM_UNROLL
    for (int i = 0; i < V; ++i) acc[i] = 0;
    for (std::int64_t y = ty; y < g.patch; y += g.block_y) {
      const Words<V> words = load<V>(strip + y * g.width + j * V);
FSFM_UNROLL
      for (int i = 0; i < V; ++i) acc[i] |= label_bit(words.byte(i));
    }
    const std::int64_t x = j * V;
    std::int64_t col = x / g.patch;
    std::int64_t next = (col + 1) * g.patch;
    std::uint32_t mask = 0;
FSFM_UNROLL
    for (int i = 0; i < V; ++i) {
      if (x + i == next) {
        or_into(col, mask);
        mask = 0;
        ++col;
        next += g.patch;
      }
      mask |= acc[i];
    }
    or_into(col, mask);
  }
}

FSFM_HD inline void store_tile(const std::uint32_t* tile, std::int16_t* out,
                               const Geometry& g, const Block& blk, int tid,
                               int nthreads) {
  std::int16_t* dst = out + (blk.b * g.grid_h + blk.row) * g.grid_w + blk.col0;
  for (std::int64_t c = tid; c < blk.ncols; c += nthreads) {
    dst[c] = static_cast<std::int16_t>(tile[c] & 0xFFFFu);
  }
}

}  // namespace presence
}  // namespace cuda
}  // namespace fsfm
