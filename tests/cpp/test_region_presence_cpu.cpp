// The CPU twin against hand-computed masks and the per-pixel oracle.
#include <cstdint>
#include <vector>

#include "fsfm_cpu.h"
#include "presence_cases.h"

using fsfm_test::Case;

namespace {

std::vector<std::int16_t> run(const Case& c, std::uint32_t* seen = nullptr) {
  // Sentinel: a valid mask never has bit 15, so unwritten outputs show up.
  std::vector<std::int16_t> out(
      static_cast<size_t>(c.batch * fsfm_test::num_patches(c)), -1);
  const std::uint32_t bits = fsfm::cpu::region_presence(
      c.parsing.data(), out.data(), c.height, c.width, c.patch, 0, c.batch);
  if (seen) *seen = bits;
  return out;
}

void hand_and_random_cases() {
  for (const Case& c : fsfm_test::hand_cases()) {
    fsfm_test::same(run(c), c.expected, c.name);
    fsfm_test::same(fsfm_test::naive_presence(c), c.expected, c.name + " (oracle)");
  }
  for (const Case& c : fsfm_test::random_cases())
    fsfm_test::same(run(c), fsfm_test::naive_presence(c), c.name);
}

// One labelled pixel on background, moved over every position: only its
// own patch may gain the label's bit.
void single_pixel_sweep() {
  Case c = fsfm_test::blank("sweep", 1, 12, 20, 4, 0);
  for (std::int64_t i = 0; i < c.height * c.width; ++i) {
    c.parsing.assign(c.parsing.size(), 0);
    c.parsing[i] = 5;
    fsfm_test::same(run(c), fsfm_test::naive_presence(c),
                    "sweep pixel " + std::to_string(i));
  }
}

void batch_range_only_touches_its_rows() {
  Case c = fsfm_test::blank("range", 3, 8, 8, 4, 1);
  std::vector<std::int16_t> out(12, -1);
  fsfm::cpu::region_presence(c.parsing.data(), out.data(), 8, 8, 4, 1, 2);
  for (int i = 0; i < 12; ++i) {
    const bool inside = i >= 4 && i < 8;
    FSFM_CHECK(out[i] == (inside ? 2 : -1), "index %d holds %d", i, out[i]);
  }
}

void returns_labels_seen() {
  std::uint32_t seen = 0;
  Case c = fsfm_test::blank("seen", 1, 4, 4, 2, 1);
  c.parsing[3] = 6;
  run(c, &seen);
  FSFM_CHECK(seen == ((1u << 1) | (1u << 6)), "seen = %#x", seen);
  c.parsing[5] = 11;
  run(c, &seen);
  FSFM_CHECK((seen >> 11) == 1u, "label 11 must set bit 11, seen = %#x", seen);
  c.parsing[7] = 200;
  run(c, &seen);
  FSFM_CHECK((seen >> 31) == 1u, "label 200 must fold into bit 31, seen = %#x", seen);
}

}  // namespace

int main() {
  hand_and_random_cases();
  single_pixel_sweep();
  batch_range_only_touches_its_rows();
  returns_labels_seen();
  return fsfm_test::finish("region_presence_cpu");
}
