// Shared cases for the region-presence tests: hand-computed maps, a naive
// per-pixel oracle, and a tiny check macro that stays active under NDEBUG.
#pragma once

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace fsfm_test {

inline int& failures() {
  static int count = 0;
  return count;
}

#define FSFM_CHECK(cond, ...)                                              \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, \
                   #cond);                                                 \
      std::fprintf(stderr, __VA_ARGS__);                                   \
      std::fprintf(stderr, "\n");                                          \
      ++::fsfm_test::failures();                                           \
    }                                                                      \
  } while (0)

struct Case {
  std::string name;
  std::int64_t batch, height, width, patch;
  std::vector<std::uint8_t> parsing;  // [batch, height, width]
  std::vector<std::int16_t> expected;  // [batch, L], empty: use the oracle
};

inline std::int64_t num_patches(const Case& c) {
  return (c.height / c.patch) * (c.width / c.patch);
}

// Bit k per patch, pixel by pixel: slow and obviously right.
inline std::vector<std::int16_t> naive_presence(const Case& c) {
  const std::int64_t gw = c.width / c.patch, L = num_patches(c);
  std::vector<std::int16_t> out(static_cast<size_t>(c.batch * L), 0);
  for (std::int64_t b = 0; b < c.batch; ++b)
    for (std::int64_t y = 0; y < c.height; ++y)
      for (std::int64_t x = 0; x < c.width; ++x) {
        const int v = c.parsing[(b * c.height + y) * c.width + x];
        out[b * L + (y / c.patch) * gw + x / c.patch] |=
            static_cast<std::int16_t>(1 << v);
      }
  return out;
}

inline Case blank(const std::string& name, std::int64_t batch,
                  std::int64_t height, std::int64_t width, std::int64_t patch,
                  std::uint8_t fill) {
  Case c{name, batch, height, width, patch, {}, {}};
  c.parsing.assign(static_cast<size_t>(batch * height * width), fill);
  return c;
}

inline void fill_rect(Case& c, std::int64_t b, std::int64_t y0, std::int64_t y1,
                      std::int64_t x0, std::int64_t x1, std::uint8_t label) {
  for (std::int64_t y = y0; y < y1; ++y)
    for (std::int64_t x = x0; x < x1; ++x)
      c.parsing[(b * c.height + y) * c.width + x] = label;
}

// Hand-computed expectations; labels sit on patch edges and corners, where
// an off-by-one in the patch arithmetic would move them.
inline std::vector<Case> hand_cases() {
  std::vector<Case> cases;

  // 32x48, patch 16: 2x3 patches; image 1 is all hair.
  Case a = blank("32x48 patch 16", 2, 32, 48, 16, 0);
  fill_rect(a, 0, 0, 16, 0, 32, 1);     // (0,0) and (0,1): skin
  fill_rect(a, 0, 15, 16, 31, 32, 2);   // (0,1): left brow in its last pixel
  fill_rect(a, 0, 0, 16, 32, 48, 10);   // (0,2): hair ...
  fill_rect(a, 0, 0, 1, 32, 33, 0);     //        ... and background at its first pixel
  fill_rect(a, 0, 16, 32, 16, 32, 1);   // (1,1): skin with both eyes
  fill_rect(a, 0, 16, 17, 16, 17, 4);
  fill_rect(a, 0, 31, 32, 31, 32, 5);
  fill_rect(a, 0, 16, 32, 32, 40, 6);   // (1,2): nose | upper lip, mouth, lower lip
  fill_rect(a, 0, 16, 21, 40, 48, 7);
  fill_rect(a, 0, 21, 27, 40, 48, 8);
  fill_rect(a, 0, 27, 32, 40, 48, 9);
  fill_rect(a, 1, 0, 32, 0, 48, 10);
  a.expected = {2, 2 | 4, 1 | 1024, 1, 2 | 16 | 32, 64 | 128 | 256 | 512,
                1024, 1024, 1024, 1024, 1024, 1024};
  cases.push_back(a);

  // 28x28, patch 14: 2x2 patches.
  Case b = blank("28x28 patch 14", 1, 28, 28, 14, 0);
  fill_rect(b, 0, 13, 14, 13, 14, 3);   // (0,0): right brow at its last pixel
  fill_rect(b, 0, 0, 14, 14, 28, 1);    // (0,1): skin, left brow at its first pixel
  fill_rect(b, 0, 0, 1, 14, 15, 2);
  fill_rect(b, 0, 14, 28, 0, 14, 7);    // (1,0): upper lip only
  fill_rect(b, 0, 14, 28, 14, 28, 10);  // (1,1): hair, inner mouth, lower lip
  fill_rect(b, 0, 14, 15, 14, 15, 8);
  fill_rect(b, 0, 27, 28, 27, 28, 9);
  b.expected = {1 | 8, 2 | 4, 128, 256 | 512 | 1024};
  cases.push_back(b);

  Case bg = blank("all background", 3, 64, 64, 16, 0);
  bg.expected.assign(3 * 16, 1);
  cases.push_back(bg);

  // Every label once, in patch k of a 4x4 grid of 4x4 patches.
  Case every = blank("every label once, patch 4", 1, 16, 16, 4, 0);
  for (int k = 1; k <= 10; ++k) {
    const int y = (k / 4) * 4 + k % 4, x = (k % 4) * 4 + (k * 3) % 4;
    fill_rect(every, 0, y, y + 1, x, x + 1, static_cast<std::uint8_t>(k));
  }
  for (int k = 0; k < 16; ++k)
    every.expected.push_back(static_cast<std::int16_t>(k <= 10 ? 1 | (1 << k) : 1));
  cases.push_back(every);

  Case whole = every;
  whole.name = "every label once, patch 16";
  whole.patch = 16;
  whole.expected = {2047};
  cases.push_back(whole);
  return cases;
}

// Random maps over shapes that exercise every load width and patch
// straddling (patch % 16 != 0, patch 1, odd widths, non-square).
inline std::vector<Case> random_cases() {
  struct Shape { std::int64_t batch, height, width, patch; };
  const Shape shapes[] = {{2, 224, 224, 16}, {2, 224, 224, 14}, {3, 64, 96, 8},
                          {1, 30, 45, 15},   {2, 12, 18, 3},    {1, 7, 5, 1},
                          {2, 40, 40, 40},   {1, 48, 80, 2},    {4, 24, 36, 6}};
  std::mt19937 rng(1234);
  std::vector<Case> cases;
  for (const Shape& s : shapes) {
    Case c = blank("random " + std::to_string(s.height) + "x" +
                       std::to_string(s.width) + " patch " +
                       std::to_string(s.patch),
                   s.batch, s.height, s.width, s.patch, 0);
    // Mostly one label per patch row band, sparse others, so masks differ.
    std::uniform_int_distribution<int> label(0, 10), coin(0, 15);
    for (auto& v : c.parsing)
      v = static_cast<std::uint8_t>(coin(rng) == 0 ? label(rng) : 1);
    cases.push_back(c);
  }
  return cases;
}

inline bool same(const std::vector<std::int16_t>& got,
                 const std::vector<std::int16_t>& want, const std::string& what) {
  if (got.size() != want.size()) {
    FSFM_CHECK(got.size() == want.size(), "%s: size %zu != %zu", what.c_str(),
               got.size(), want.size());
    return false;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      FSFM_CHECK(got[i] == want[i], "%s: patch %zu: got %d, want %d",
                 what.c_str(), i, got[i], want[i]);
      return false;
    }
  }
  return true;
}

inline int finish(const char* suite) {
  if (failures() == 0) {
    std::printf("%s: all checks passed\n", suite);
    return 0;
  }
  std::fprintf(stderr, "%s: %d check(s) failed\n", suite, failures());
  return 1;
}

}  // namespace fsfm_test
