// The CUDA kernel's block program (kernels/crfrp_mask.cuh), replayed one
// thread after another on the CPU, against the CPU twin: bit-identical masks
// for every case and configuration, at every load width the launch can pick
// and for thread counts other than the launch's, which shows the masks do
// not depend on the block layout. Runs without CUDA.
#include <cstdint>
#include <cstring>
#include <vector>

#include "crfrp_cases.h"
#include "fsfm_cpu.h"

using fsfm_test::Case;
using fsfm_test::Config;
using fsfm_test::Masks;
namespace crfrp = fsfm::crfrp;

namespace {

Masks twin(const Case& c, const Config& cfg) {
  Masks m;
  fsfm::cpu::crfrp_mask(fsfm_test::make_params(c, cfg, c.parsing.data(), m), 0, c.batch);
  return m;
}

// The replay on a copy of the map `offset` bytes past a 16-byte boundary
// (narrower loads); returns the load width the launch chose.
int replay(const Case& c, const Config& cfg, int offset, int threads, Masks& out) {
  std::vector<std::uint8_t> storage(c.parsing.size() + 32);
  const auto base = reinterpret_cast<std::uintptr_t>(storage.data());
  std::uint8_t* dst = storage.data() + ((16 - base % 16) % 16) + offset;
  std::memcpy(dst, c.parsing.data(), c.parsing.size());
  const crfrp::Params p = fsfm_test::make_params(c, cfg, dst, out);
  crfrp::Launch ln{};
  FSFM_CHECK(crfrp::make_launch(p, reinterpret_cast<std::uintptr_t>(dst), threads, &ln),
             "%s: launch rejected", c.name.c_str());
  FSFM_CHECK(ln.g.block_x * ln.g.block_y * ln.row_groups <= ln.threads,
             "%s: presence layout needs more threads than the block has", c.name.c_str());
  FSFM_CHECK(crfrp::replay(p, threads, 0, c.batch), "%s: replay failed", c.name.c_str());
  return ln.g.vec;
}

void check_replay(const Case& c, const Config& cfg, const Masks& want, int offset, int threads) {
  Masks got;
  replay(c, cfg, offset, threads, got);
  const std::string what = fsfm_test::describe(c, cfg) + " byte offset " +
                           std::to_string(offset) + " threads " + std::to_string(threads);
  fsfm_test::same_bytes(got.img, want.img, what + " img");
  fsfm_test::same_bytes(got.fr, want.fr, what + " fr");
}

void all_cases_all_configs() {
  for (const Case& c : fsfm_test::mask_cases())
    for (const Config& cfg : fsfm_test::sweep_configs(c)) {
      const Masks want = twin(c, cfg);
      fsfm_test::check_invariants(c, cfg, want);
      check_replay(c, cfg, want, 0, 0);
    }
}

// Load widths and block sizes: launch-independent results.
void layouts() {
  const Case c = fsfm_test::face_case("faces 224/16", 3, 224, 224, 16, 31);
  const Case d = fsfm_test::face_case("faces 224/14", 2, 224, 224, 14, 32);
  for (const Case* k : {&c, &d}) {
    Config cfg;
    cfg.region = crfrp::kRegionImage;
    cfg.seed = 5;
    const Masks want = twin(*k, cfg);
    for (int offset : {0, 1, 2, 4, 8})
      for (int threads : {0, 32, 96, 200, 512}) check_replay(*k, cfg, want, offset, threads);
  }
  Masks unused;
  FSFM_CHECK(replay(c, Config{}, 0, 0, unused) == 16,
             "aligned 224-wide rows must use 16-byte loads");
  FSFM_CHECK(replay(c, Config{}, 4, 0, unused) == 4, "4-byte aligned rows must use 4-byte loads");
  FSFM_CHECK(replay(c, Config{}, 1, 0, unused) == 1, "unaligned rows must use byte loads");
}

// More patches than threads: each thread owns several patches in every phase.
void many_patches() {
  const Case c = fsfm_test::random_label_case("L = 2304", 2, 96, 96, 2, 41, 50);
  for (int strategy = crfrp::kCrfrP; strategy <= crfrp::kRandom; ++strategy) {
    Config cfg;
    cfg.strategy = strategy;
    cfg.region = crfrp::kRegionImage;
    cfg.seed = 9 + strategy;
    const Masks want = twin(c, cfg);
    fsfm_test::check_invariants(c, cfg, want);
    check_replay(c, cfg, want, 0, 0);
    check_replay(c, cfg, want, 0, 128);
  }
}

void launch_shape() {
  const Case c = fsfm_test::blank("shape", 1, 224, 224, 16, 1);
  Masks m;
  const crfrp::Params p = fsfm_test::make_params(c, Config{}, c.parsing.data(), m);
  crfrp::Launch ln{};
  FSFM_CHECK(crfrp::make_launch(p, 0, 0, &ln), "224/16 launch rejected");
  FSFM_CHECK(ln.threads == 224, "224/16 (L = 196) must launch 224 threads, got %d", ln.threads);
  FSFM_CHECK(ln.g.block_x == 14 && ln.row_groups == 14 && ln.g.block_y == 1,
             "224/16 presence layout %d x %d x %d", ln.g.block_x, ln.g.block_y, ln.row_groups);
  FSFM_CHECK(ln.smem_bytes <= 48 * 1024, "224/16 must fit the default shared memory");
}

}  // namespace

int main() {
  all_cases_all_configs();
  layouts();
  many_patches();
  launch_shape();
  return fsfm_test::finish("crfrp_mask_replay");
}
