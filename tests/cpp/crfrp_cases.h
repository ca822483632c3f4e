// Shared pieces of the CRFR-P mask tests: parsing maps (face-like, random,
// single-label, hair-dominated), a runner for one configuration, and a
// checker for the invariants of SPEC section 2.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "crfrp_mask.cuh"
#include "presence_cases.h"

namespace fsfm_test {

namespace crfrp = fsfm::crfrp;

// Ellipse centre and radii as fractions of the map's height / width.
struct Part {
  std::uint8_t label;
  double cy, cx, ry, rx;
};

inline void paint(Case& c, std::int64_t b, const Part& part) {
  for (std::int64_t y = 0; y < c.height; ++y)
    for (std::int64_t x = 0; x < c.width; ++x) {
      const double dy = ((y + 0.5) / c.height - part.cy) / part.ry;
      const double dx = ((x + 0.5) / c.width - part.cx) / part.rx;
      if (dy * dy + dx * dx <= 1.0) c.parsing[(b * c.height + y) * c.width + x] = part.label;
    }
}

// Background, hair cap, skin, brows, eyes, nose, lips; jittered per image.
inline Case face_case(const std::string& name, std::int64_t batch, std::int64_t height,
                      std::int64_t width, std::int64_t patch, unsigned seed) {
  Case c = blank(name, batch, height, width, patch, 0);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> jitter(0.85, 1.15);
  const Part parts[] = {{10, 0.40, 0.50, 0.38, 0.36}, {1, 0.56, 0.50, 0.36, 0.27},
                        {2, 0.42, 0.38, 0.02, 0.07},  {3, 0.42, 0.62, 0.02, 0.07},
                        {4, 0.48, 0.38, 0.03, 0.055}, {5, 0.48, 0.62, 0.03, 0.055},
                        {6, 0.59, 0.50, 0.08, 0.035}, {7, 0.705, 0.50, 0.02, 0.09},
                        {8, 0.725, 0.50, 0.01, 0.07}, {9, 0.75, 0.50, 0.022, 0.085}};
  for (std::int64_t b = 0; b < batch; ++b)
    for (Part part : parts) {
      part.ry *= jitter(rng);
      part.rx *= jitter(rng);
      paint(c, b, part);
    }
  return c;
}

inline Case random_label_case(const std::string& name, std::int64_t batch, std::int64_t height,
                              std::int64_t width, std::int64_t patch, unsigned seed,
                              int sparse_one_in) {
  Case c = blank(name, batch, height, width, patch, 1);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> label(0, 10), coin(0, sparse_one_in - 1);
  for (auto& v : c.parsing)
    if (coin(rng) == 0) v = static_cast<std::uint8_t>(label(rng));
  return c;
}

// Mostly hair around a small face: the hair region alone exceeds M.
inline Case hair_case(const std::string& name, std::int64_t batch, std::int64_t size,
                      std::int64_t patch) {
  Case c = blank(name, batch, size, size, patch, 10);
  for (std::int64_t b = 0; b < batch; ++b) {
    paint(c, b, {1, 0.55, 0.5, 0.12, 0.09});
    paint(c, b, {4, 0.52, 0.46, 0.01, 0.02});
  }
  return c;
}

// Every label alone, one image per label.
inline Case single_label_case(std::int64_t height, std::int64_t width, std::int64_t patch) {
  Case c = blank("single labels", 11, height, width, patch, 0);
  for (std::int64_t b = 0; b < 11; ++b)
    fill_rect(c, b, 0, height, 0, width, static_cast<std::uint8_t>(b));
  return c;
}

// The cases every implementation runs: batch 1, non-square, patch 14 on 224,
// patch sizes that straddle loads, labels per pixel, one label per map.
inline std::vector<Case> mask_cases() {
  std::vector<Case> cases;
  cases.push_back(face_case("faces 224/16", 6, 224, 224, 16, 1));
  cases.push_back(face_case("faces 224/14", 3, 224, 224, 14, 2));
  cases.push_back(face_case("faces 112x224/16", 3, 112, 224, 16, 3));
  cases.push_back(face_case("faces 96x64/8", 2, 96, 64, 8, 4));
  cases.push_back(face_case("face 1x1 patch grid", 2, 32, 32, 32, 5));
  cases.push_back(face_case("batch of one", 1, 64, 64, 16, 6));
  cases.push_back(random_label_case("labels per pixel", 4, 224, 224, 16, 7, 1));
  cases.push_back(random_label_case("sparse labels 60x45/15", 3, 60, 45, 15, 8, 20));
  cases.push_back(random_label_case("sparse labels patch 3", 2, 24, 36, 3, 9, 4));
  cases.push_back(hair_case("hair over M", 3, 224, 16));
  cases.push_back(single_label_case(64, 48, 16));
  return cases;
}

struct Masks {
  std::vector<std::uint8_t> img, fr;
};

struct Config {
  double ratio = 0.75;
  int strategy = crfrp::kCrfrP;
  int region = crfrp::kRegionBatch;
  std::vector<std::int64_t> region_index;  // used when region == kRegionGiven
  std::uint64_t seed = 0, offset = 0;
};

inline std::string describe(const Case& c, const Config& cfg) {
  return c.name + " strategy " + std::to_string(cfg.strategy) + " region " +
         std::to_string(cfg.region) + " ratio " + std::to_string(cfg.ratio) + " seed " +
         std::to_string(cfg.seed) + " offset " + std::to_string(cfg.offset);
}

// Params over host buffers; parsing may point at a copy of c.parsing.
inline crfrp::Params make_params(const Case& c, const Config& cfg, const std::uint8_t* parsing,
                                 Masks& out) {
  const std::int64_t L = num_patches(c);
  out.img.assign(static_cast<size_t>(c.batch * L), 0xAB);  // 0xAB: never written
  out.fr.assign(static_cast<size_t>(c.batch * L), 0xAB);
  crfrp::Params p{};
  p.parsing = parsing;
  p.img_mask = out.img.data();
  p.fr_mask = out.fr.data();
  p.region_index = cfg.region_index.empty() ? nullptr : cfg.region_index.data();
  p.batch = c.batch;
  p.height = c.height;
  p.width = c.width;
  p.patch = c.patch;
  p.num_mask = static_cast<std::int64_t>(cfg.ratio * static_cast<double>(L));
  p.strategy = cfg.strategy;
  p.region = cfg.region;
  p.seed = cfg.seed;
  p.offset = cfg.offset;
  return p;
}

// Group-touch bits per patch, pixel by pixel (through the region-presence oracle).
inline std::vector<std::uint32_t> touch_of(const Case& c) {
  const std::vector<std::int16_t> presence = naive_presence(c);
  std::vector<std::uint32_t> touch(presence.size());
  for (size_t i = 0; i < presence.size(); ++i)
    touch[i] = crfrp::group_bits(static_cast<std::uint16_t>(presence[i]));
  return touch;
}

// SPEC section 2, per image: exactly M hidden, fr within img, fr is region R
// (all of it when |R| < M, an M-subset of it otherwise), and R is the given
// region when one is forced; "random" has no fr. Returns false on a failure.
inline bool check_invariants(const Case& c, const Config& cfg, const Masks& m) {
  const std::int64_t L = num_patches(c);
  const auto M = static_cast<std::int64_t>(cfg.ratio * static_cast<double>(L));
  const std::vector<std::uint32_t> touch = touch_of(c);
  const std::string what = describe(c, cfg);
  const int before = failures();
  for (std::int64_t b = 0; b < c.batch; ++b) {
    std::int64_t hidden = 0, n_fr = 0;
    for (std::int64_t i = 0; i < L; ++i) {
      const auto img = m.img[b * L + i], fr = m.fr[b * L + i];
      FSFM_CHECK(img <= 1 && fr <= 1, "%s: image %lld: non-0/1 output", what.c_str(), (long long)b);
      FSFM_CHECK(!(fr && !img), "%s: image %lld: fr patch %lld not hidden", what.c_str(),
                 (long long)b, (long long)i);
      hidden += img;
      n_fr += fr;
    }
    FSFM_CHECK(hidden == M, "%s: image %lld hides %lld, want %lld", what.c_str(), (long long)b,
               (long long)hidden, (long long)M);
    if (cfg.strategy == crfrp::kRandom) {
      FSFM_CHECK(n_fr == 0, "%s: random strategy with a region", what.c_str());
      continue;
    }
    bool some_region = false;
    for (int r = 0; r < crfrp::kNumRegions; ++r) {
      if (cfg.region == crfrp::kRegionGiven && r != cfg.region_index[b]) continue;
      std::int64_t size = 0;
      bool inside = true, equal = true;
      for (std::int64_t i = 0; i < L; ++i) {
        const bool in_r = (touch[b * L + i] >> r) & 1u;
        size += in_r;
        inside = inside && (in_r || !m.fr[b * L + i]);
        equal = equal && (in_r == (m.fr[b * L + i] != 0));
      }
      some_region = some_region || (size < M ? equal : (inside && n_fr == M));
    }
    FSFM_CHECK(some_region, "%s: image %lld: fr is not a (cut) facial region", what.c_str(),
               (long long)b);
  }
  return failures() == before;
}

// The configurations the cross-checks sweep: every strategy and region mode,
// odd ratios, seeds whose high bits matter.
inline std::vector<Config> sweep_configs(const Case& c) {
  std::vector<Config> out;
  const double ratios[] = {0.75, 0.5, 0.29, 0.9};
  const std::uint64_t seeds[] = {0, 1, 0xDEADBEEFCAFEF00Dull};
  int n = 0;
  for (int strategy = crfrp::kCrfrP; strategy <= crfrp::kRandom; ++strategy)
    for (int region = crfrp::kRegionBatch; region <= crfrp::kRegionGiven; ++region)
      for (std::uint64_t seed : seeds) {
        Config cfg;
        cfg.strategy = strategy;
        cfg.region = region;
        cfg.ratio = ratios[n++ % 4];
        cfg.seed = seed;
        cfg.offset = static_cast<std::uint64_t>(n) << 33 | static_cast<std::uint64_t>(n);
        if (region == crfrp::kRegionGiven)
          for (std::int64_t b = 0; b < c.batch; ++b) cfg.region_index.push_back((b + n) % 6);
        out.push_back(cfg);
      }
  return out;
}

inline bool same_bytes(const std::vector<std::uint8_t>& got, const std::vector<std::uint8_t>& want,
                       const std::string& what) {
  if (got == want) return true;
  FSFM_CHECK(got.size() == want.size(), "%s: size %zu != %zu", what.c_str(), got.size(),
             want.size());
  for (size_t i = 0; i < got.size() && i < want.size(); ++i)
    if (got[i] != want[i]) {
      FSFM_CHECK(got[i] == want[i], "%s: element %zu: got %d, want %d", what.c_str(), i, got[i],
                 want[i]);
      break;
    }
  return false;
}

}  // namespace fsfm_test
