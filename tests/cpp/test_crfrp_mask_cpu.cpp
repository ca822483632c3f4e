// The CRFR-P CPU twin: Philox known answers, hand-computed masks, the SPEC
// invariants over many maps and configurations, and the properties of the
// random stream (reproducible, seed- and offset-sensitive, per image).
#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include "crfrp_cases.h"
#include "fsfm_cpu.h"
#include "philox.cuh"

using fsfm_test::Case;
using fsfm_test::Config;
using fsfm_test::Masks;
namespace crfrp = fsfm::crfrp;
namespace philox = fsfm::philox;

namespace {

// A configuration with forced regions (moved in: GCC 12 warns falsely on
// initializer-list assignment into an empty vector).
Config forced(std::vector<std::int64_t> regions, std::uint64_t seed = 0) {
  Config cfg;
  cfg.region = crfrp::kRegionGiven;
  cfg.region_index = std::move(regions);
  cfg.seed = seed;
  return cfg;
}

Masks run(const Case& c, const Config& cfg, std::int64_t b0 = 0, std::int64_t b1 = -1) {
  Masks m;
  const crfrp::Params p = fsfm_test::make_params(c, cfg, c.parsing.data(), m);
  FSFM_CHECK(crfrp::valid(p), "%s: invalid params", fsfm_test::describe(c, cfg).c_str());
  fsfm::cpu::crfrp_mask(p, b0, b1 < 0 ? c.batch : b1);
  return m;
}

// Random123's published vectors for philox4x32-10.
void philox_known_answers() {
  struct Kat {
    philox::Words counter;
    std::uint32_t k0, k1;
    philox::Words want;
  };
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
       0xffffffffu,
       0xffffffffu,
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
       0xa4093822u,
       0x299f31d0u,
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const Kat& k : kats) {
    const philox::Words got = philox::philox4x32_10(k.counter, k.k0, k.k1);
    for (int i = 0; i < 4; ++i)
      FSFM_CHECK(got.v[i] == k.want.v[i], "KAT word %d: got %#x, want %#x", i, got.v[i],
                 k.want.v[i]);
  }
}

// The documented layout: c0 = stage << 24 | slot >> 2, c1 = image,
// c2:c3 = offset, key = seed, word slot & 3.
void counter_layout() {
  const std::uint64_t seed = 0x0123456789ABCDEFull, offset = 0xFEDCBA9876543210ull;
  for (std::uint64_t slot : {0ull, 3ull, 4ull, 197ull, (1ull << 26) - 1}) {
    const philox::Words ctr{{(7u << 24) | static_cast<std::uint32_t>(slot >> 2), 42u,
                             0x76543210u, 0xFEDCBA98u}};
    const std::uint32_t want = philox::philox4x32_10(ctr, 0x89ABCDEFu, 0x01234567u).v[slot & 3];
    FSFM_CHECK(crfrp::draw(seed, offset, 42, 7, slot) == want, "draw, slot %llu",
               static_cast<unsigned long long>(slot));
  }
}

// 32x32, patch 16: (0,0) brow on skin, (0,1) eye on skin, (1,0) skin and
// hair (boundary + hair + skin), (1,1) background. L = 4, M = 3.
Case four_patches() {
  Case c = fsfm_test::blank("four patches", 1, 32, 32, 16, 1);
  fsfm_test::fill_rect(c, 0, 4, 6, 4, 12, 2);
  fsfm_test::fill_rect(c, 0, 6, 9, 20, 28, 4);
  fsfm_test::fill_rect(c, 0, 16, 32, 0, 6, 10);
  fsfm_test::fill_rect(c, 0, 16, 32, 16, 32, 0);
  return c;
}

void four_patch_groups() {
  const Case c = four_patches();
  const std::vector<std::uint32_t> touch = fsfm_test::touch_of(c);
  const std::vector<std::uint32_t> want = {1u | 64u, 2u | 64u, 16u | 32u | 64u, 128u};
  for (int i = 0; i < 4; ++i)
    FSFM_CHECK(touch[i] == want[i], "patch %d touches %#x, want %#x", i, touch[i], want[i]);
}

// Forced brows: fr = {0}; ratio 2/3 hides eye {1}, boundary {2} (which claims
// hair and skin) and background {3}: 4 > M, so the fix-up unhides one of
// 1, 2, 3 (never 0), each for some seed.
void four_patch_masks() {
  const Case c = four_patches();
  std::set<int> dropped;
  for (std::uint64_t seed = 0; seed < 64; ++seed) {
    const Config cfg = forced({0}, seed);
    const Masks m = run(c, cfg);
    fsfm_test::check_invariants(c, cfg, m);
    FSFM_CHECK(m.fr == (std::vector<std::uint8_t>{1, 0, 0, 0}), "fr is not the brow patch");
    FSFM_CHECK(m.img[0] == 1, "the region must stay hidden");
    for (int i = 1; i < 4; ++i)
      if (!m.img[i]) dropped.insert(i);
  }
  FSFM_CHECK(dropped == (std::set<int>{1, 2, 3}), "fix-up did not spread over patches 1..3");
  // Forced nose (absent): fr empty, ratio 3/4 hides all four, one comes back.
  const Config cfg = forced({2});
  const Masks m = run(c, cfg);
  FSFM_CHECK(m.fr == (std::vector<std::uint8_t>(4, 0)), "absent region must give empty fr");
  fsfm_test::check_invariants(c, cfg, m);
}

// 16x32, patch 8: 2 brow patches and 6 skin patches, no nose; M = 6, ratio
// 6/8. round(1.5) = 2 brows, round(4.5) = 4 skin (half to even) = M: no
// fix-up, so both brows are always hidden. Rounding 4.5 up would hide 7 and
// the fix-up would sometimes unhide a brow.
void round_half_to_even() {
  Case c = fsfm_test::blank("half to even", 1, 16, 32, 8, 1);
  fsfm_test::fill_rect(c, 0, 0, 8, 0, 16, 2);
  for (std::uint64_t seed = 0; seed < 64; ++seed) {
    const Masks m = run(c, forced({2}, seed));
    FSFM_CHECK(m.img[0] == 1 && m.img[1] == 1, "seed %llu: a brow patch is visible",
               static_cast<unsigned long long>(seed));
    int skin = 0;
    for (int i = 2; i < 8; ++i) skin += m.img[i];
    FSFM_CHECK(skin == 4, "seed %llu: %d skin patches hidden, want 4",
               static_cast<unsigned long long>(seed), skin);
  }
}

// |hair| = 16 > M = 8: the mask is 8 random hair patches, and fr equals it.
void region_larger_than_m() {
  const Case c = fsfm_test::blank("all hair", 2, 64, 64, 16, 10);
  for (int strategy = crfrp::kCrfrP; strategy <= crfrp::kFr; ++strategy) {
    Config cfg = forced({5, 5}, 11);
    cfg.ratio = 0.5;
    cfg.strategy = strategy;
    const Masks m = run(c, cfg);
    fsfm_test::check_invariants(c, cfg, m);
    FSFM_CHECK(m.img == m.fr, "strategy %d: img != fr when |R| >= M", strategy);
    FSFM_CHECK(!std::equal(m.img.begin(), m.img.begin() + 16, m.img.begin() + 16),
               "strategy %d: both images kept the same hair patches", strategy);
  }
}

void invariants_everywhere() {
  for (const Case& c : fsfm_test::mask_cases())
    for (const Config& cfg : fsfm_test::sweep_configs(c))
      fsfm_test::check_invariants(c, cfg, run(c, cfg));
}

// Image b's mask depends on (seed, offset, b, its map) only: a batch range
// gives the rows of the full call, and other rows stay untouched.
void stream_properties() {
  const Case c = fsfm_test::face_case("faces", 5, 112, 112, 16, 21);
  Config cfg;
  cfg.region = crfrp::kRegionImage;
  cfg.seed = 77;
  cfg.offset = 5;
  const Masks all = run(c, cfg), again = run(c, cfg);
  fsfm_test::same_bytes(again.img, all.img, "reproducible img");
  fsfm_test::same_bytes(again.fr, all.fr, "reproducible fr");
  const Masks part = run(c, cfg, 2, 4);
  const std::int64_t L = fsfm_test::num_patches(c);
  for (std::int64_t i = 0; i < c.batch * L; ++i) {
    const bool inside = i >= 2 * L && i < 4 * L;
    FSFM_CHECK(part.img[i] == (inside ? all.img[i] : 0xAB), "batch range, element %lld",
               static_cast<long long>(i));
  }
  Config other_seed = cfg, other_offset = cfg;
  other_seed.seed = 78;
  other_offset.offset = 6;
  FSFM_CHECK(run(c, other_seed).img != all.img, "seed must change the masks");
  FSFM_CHECK(run(c, other_offset).img != all.img, "offset must change the masks");
  // Identical maps in one batch still get independent masks.
  const Case same = fsfm_test::face_case("same face", 1, 112, 112, 16, 22);
  Case twice = same;
  twice.batch = 2;
  twice.parsing.insert(twice.parsing.end(), same.parsing.begin(), same.parsing.end());
  const Masks m = run(twice, cfg);
  FSFM_CHECK(!std::equal(m.img.begin(), m.img.begin() + L, m.img.begin() + L),
             "two images of one batch got the same mask");
}

void reports_labels_seen() {
  Case c = fsfm_test::blank("bad label", 2, 32, 32, 16, 1);
  Masks m;
  const crfrp::Params p = fsfm_test::make_params(c, Config{}, c.parsing.data(), m);
  FSFM_CHECK(fsfm::cpu::crfrp_mask(p, 0, 2) == (1u << 1), "seen bits of an all-skin map");
  c.parsing[1000] = 12;
  const crfrp::Params q = fsfm_test::make_params(c, Config{}, c.parsing.data(), m);
  FSFM_CHECK((fsfm::cpu::crfrp_mask(q, 0, 2) >> 11) != 0, "label 12 must be reported");
}

void rejects_invalid_params() {
  const Case c = fsfm_test::blank("params", 1, 32, 32, 16, 1);
  Masks m;
  crfrp::Params p = fsfm_test::make_params(c, Config{}, c.parsing.data(), m);
  FSFM_CHECK(crfrp::valid(p), "valid params rejected");
  crfrp::Params q = p;
  q.patch = 15;
  FSFM_CHECK(!crfrp::valid(q), "patch 15 on 32x32 accepted");
  q = p;
  q.num_mask = 4;
  FSFM_CHECK(!crfrp::valid(q), "M = L accepted");
  q = p;
  q.region = crfrp::kRegionGiven;
  FSFM_CHECK(!crfrp::valid(q), "forced region without region_index accepted");
  q = p;
  q.strategy = 4;
  FSFM_CHECK(!crfrp::valid(q), "unknown strategy accepted");
}

}  // namespace

int main() {
  philox_known_answers();
  counter_layout();
  four_patch_groups();
  four_patch_masks();
  round_half_to_even();
  region_larger_than_m();
  invariants_everywhere();
  stream_properties();
  reports_labels_seen();
  rejects_invalid_params();
  return fsfm_test::finish("crfrp_mask_cpu");
}
