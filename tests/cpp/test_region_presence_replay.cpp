// Replays the CUDA kernel's blocks and threads one after another on the CPU
// (kernels/region_presence.cuh is host-compilable), so its geometry, load
// widths and patch-straddling logic are tested on machines without a GPU.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "presence_cases.h"
#include "region_presence.cuh"

using fsfm_test::Case;
namespace p = fsfm::cuda::presence;

namespace {

template <int V>
void replay_block(const std::uint8_t* parsing, const p::Geometry& g,
                  const p::Block& blk, std::vector<std::uint32_t>& tile) {
  for (int ty = 0; ty < g.block_y; ++ty)
    for (int tx = 0; tx < g.block_x; ++tx)
      p::presence_thread<V>(parsing, g, blk, tx, ty,
                            [&](std::int64_t col, std::uint32_t mask) {
                              FSFM_CHECK(col >= 0 && col < blk.ncols,
                                         "column %lld outside the tile",
                                         static_cast<long long>(col));
                              if (col >= 0 && col < blk.ncols) tile[col] |= mask;
                            });
}

// Runs the kernel logic on parsing (which may sit at any byte offset);
// returns the load width the geometry chose.
int replay(const std::uint8_t* parsing, std::int16_t* out, const Case& c) {
  p::Geometry g;
  const bool ok = p::make_geometry(c.batch, c.height, c.width, c.patch,
                                   reinterpret_cast<std::uintptr_t>(parsing), &g);
  FSFM_CHECK(ok, "%s: geometry rejected", c.name.c_str());
  if (!ok) return 0;
  FSFM_CHECK(g.block_x * g.block_y <= p::kMaxThreads, "%s: block too large",
             c.name.c_str());
  std::vector<std::uint32_t> tile(static_cast<size_t>(g.tile_cols));
  for (std::int64_t i = 0; i < p::num_blocks(g); ++i) {
    const p::Block blk = p::block_at(g, i);
    std::fill(tile.begin(), tile.end(), 0u);
    switch (g.vec) {
      case 16: replay_block<16>(parsing, g, blk, tile); break;
      case 8: replay_block<8>(parsing, g, blk, tile); break;
      case 4: replay_block<4>(parsing, g, blk, tile); break;
      case 2: replay_block<2>(parsing, g, blk, tile); break;
      default: replay_block<1>(parsing, g, blk, tile); break;
    }
    p::store_tile(tile.data(), out, g, blk, 0, 1);
  }
  return g.vec;
}

// Copies the map to `offset` bytes past a 16-byte boundary, which forces
// narrower loads, and checks the replay there.
void check_at_offset(const Case& c, const std::vector<std::int16_t>& want,
                     int offset, int expect_vec) {
  std::vector<std::uint8_t> storage(c.parsing.size() + 32);
  auto base = reinterpret_cast<std::uintptr_t>(storage.data());
  std::uint8_t* dst = storage.data() + ((16 - base % 16) % 16) + offset;
  std::memcpy(dst, c.parsing.data(), c.parsing.size());
  std::vector<std::int16_t> out(want.size(), -1);
  const int vec = replay(dst, out.data(), c);
  const std::string what = c.name + " at offset " + std::to_string(offset);
  fsfm_test::same(out, want, what);
  if (expect_vec) FSFM_CHECK(vec == expect_vec, "%s: vec %d, want %d", what.c_str(), vec, expect_vec);
}

void all_cases_all_offsets() {
  std::vector<Case> cases = fsfm_test::hand_cases();
  for (const Case& c : fsfm_test::random_cases()) cases.push_back(c);
  for (const Case& c : cases) {
    const auto want = c.expected.empty() ? fsfm_test::naive_presence(c) : c.expected;
    for (int offset : {0, 1, 2, 4, 8}) check_at_offset(c, want, offset, 0);
  }
}

void load_width_follows_alignment() {
  Case c = fsfm_test::blank("224 wide", 1, 16, 224, 16, 1);
  const auto want = fsfm_test::naive_presence(c);
  check_at_offset(c, want, 0, 16);
  check_at_offset(c, want, 8, 8);
  check_at_offset(c, want, 4, 4);
  check_at_offset(c, want, 2, 2);
  check_at_offset(c, want, 1, 1);
}

// Wider than one tile (kMaxTileCols patches): several blocks per patch row.
void multi_tile_rows() {
  Case c = fsfm_test::blank("multi-tile", 2, 2, 2 * p::kMaxTileCols + 40, 1, 1);
  for (size_t i = 0; i < c.parsing.size(); i += 7) c.parsing[i] = static_cast<std::uint8_t>(i % 11);
  const auto want = fsfm_test::naive_presence(c);
  for (int offset : {0, 1, 8}) check_at_offset(c, want, offset, 0);
  Case d = fsfm_test::blank("multi-tile patch 2", 1, 4, 2 * (p::kMaxTileCols + 3), 2, 0);
  for (size_t i = 0; i < d.parsing.size(); i += 5) d.parsing[i] = static_cast<std::uint8_t>(1 + i % 10);
  check_at_offset(d, fsfm_test::naive_presence(d), 0, 0);
}

void single_pixel_sweep() {
  for (std::int64_t patch : {3, 4, 5, 16}) {
    Case c = fsfm_test::blank("sweep patch " + std::to_string(patch), 2,
                              patch * 2, patch * 4, patch, 0);
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(c.parsing.size()); ++i) {
      std::fill(c.parsing.begin(), c.parsing.end(), 0);
      c.parsing[i] = 9;
      check_at_offset(c, fsfm_test::naive_presence(c), 0, 0);
    }
  }
}

void rejects_bad_geometry() {
  p::Geometry g;
  FSFM_CHECK(!p::make_geometry(1, 30, 32, 16, 0, &g), "H not divisible accepted");
  FSFM_CHECK(!p::make_geometry(1, 32, 30, 16, 0, &g), "W not divisible accepted");
  FSFM_CHECK(!p::make_geometry(1, 32, 32, 0, 0, &g), "patch 0 accepted");
  FSFM_CHECK(p::make_geometry(0, 32, 32, 16, 0, &g) && p::num_blocks(g) == 0,
             "empty batch must give zero blocks");
}

}  // namespace

int main() {
  all_cases_all_offsets();
  load_width_follows_alignment();
  multi_tile_rows();
  single_pixel_sweep();
  rejects_bad_geometry();
  return fsfm_test::finish("region_presence_replay");
}
