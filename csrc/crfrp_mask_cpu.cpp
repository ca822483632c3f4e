// CPU twin of the CRFR-P kernel (kernels/crfrp_mask.cu).
//
// Same stages, same Philox draws, same "k smallest (key, patch)" rule, so
// the same masks; but written for one core: each choice gathers its
// candidates' composites and takes the k smallest with nth_element, O(n),
// where the GPU ranks every candidate against all others in parallel. The
// label-presence pass is its own too, with a fast path for uniform runs.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "crfrp_mask.cuh"
#include "fsfm_cpu.h"

namespace fsfm {
namespace cpu {
namespace {

namespace c = crfrp;

constexpr std::uint64_t kBytes = 0x0101010101010101ull;

inline std::uint32_t label_bit(std::uint32_t label) {
  return 1u << (label < 31u ? label : 31u);
}

// Label bits of n consecutive pixels. Parsing maps are mostly large blobs, so
// most 8-pixel words hold one label: one compare instead of eight shifts.
inline std::uint32_t run_bits(const std::uint8_t* px, std::int64_t n) {
  std::uint32_t bits = 0;
  std::int64_t x = 0;
  for (; x + 8 <= n; x += 8) {
    std::uint64_t w;
    std::memcpy(&w, px + x, 8);
    if (w == (w & 0xFFu) * kBytes) {
      bits |= label_bit(static_cast<std::uint32_t>(w & 0xFFu));
    } else {
      for (int i = 0; i < 8; ++i)
        bits |= label_bit(static_cast<std::uint32_t>(w >> (8 * i)) & 0xFFu);
    }
  }
  for (; x < n; ++x) bits |= label_bit(px[x]);
  return bits;
}

// Label bits of one patch (top-left pixel px). Most patches hold a single
// label, so a branch-free pass first compares every pixel with the first one;
// only mixed patches take the word-by-word path. kPatch > 0 fixes the patch
// size at compile time (the common 16 and 14), which lets the compiler unroll
// and vectorise the pass.
template <std::int64_t kPatch>
inline std::uint32_t patch_bits(const std::uint8_t* px, std::int64_t width,
                                std::int64_t patch_arg) {
  const std::int64_t patch = kPatch > 0 ? kPatch : patch_arg;
  const std::uint8_t first = px[0];
  const std::uint64_t first8 = first * kBytes;
  std::uint64_t diff = 0;
  for (std::int64_t y = 0; y < patch; ++y) {
    const std::uint8_t* row = px + y * width;
    std::int64_t x = 0;
    for (; x + 8 <= patch; x += 8) {
      std::uint64_t w;
      std::memcpy(&w, row + x, 8);
      diff |= w ^ first8;
    }
    for (; x < patch; ++x) diff |= row[x] ^ first;
  }
  if (diff == 0) return label_bit(first);
  std::uint32_t bits = 0;
  for (std::int64_t y = 0; y < patch; ++y) bits |= run_bits(px + y * width, patch);
  return bits;
}

template <std::int64_t kPatch>
std::uint32_t presence_rows(const std::uint8_t* image, std::int64_t height, std::int64_t width,
                            std::int64_t patch, std::uint32_t* out) {
  const std::int64_t grid_w = width / patch;
  std::uint32_t seen = 0;
  for (std::int64_t r = 0; r < height / patch; ++r) {
    const std::uint8_t* band = image + r * patch * width;
    for (std::int64_t col = 0; col < grid_w; ++col) {
      const std::uint32_t bits = patch_bits<kPatch>(band + col * patch, width, patch);
      out[r * grid_w + col] = bits;
      seen |= bits;
    }
  }
  return seen;
}

// Per-patch label bits of one image (row-major patches); returns all bits seen.
std::uint32_t image_presence(const std::uint8_t* image, std::int64_t height, std::int64_t width,
                             std::int64_t patch, std::uint32_t* out) {
  if (patch == 16) return presence_rows<16>(image, height, width, patch, out);
  if (patch == 14) return presence_rows<14>(image, height, width, patch, out);
  return presence_rows<0>(image, height, width, patch, out);
}

// One image at a time, with scratch buffers reused across a batch range.
class Masker {
 public:
  explicit Masker(const c::Params& p)
      : p_(p), L_(c::num_patches(p)),
        presence_(static_cast<std::size_t>(L_)),
        touch_(static_cast<std::size_t>(L_)),
        state_(static_cast<std::size_t>(L_)),
        words_(static_cast<std::size_t>((L_ + 3) / 4 * 4)) {
    cand_.reserve(static_cast<std::size_t>(L_));
    keys_.reserve(static_cast<std::size_t>(L_));
  }

  // Returns the label bits of image b.
  std::uint32_t run(std::int64_t b) {
    b_ = b;
    words_stage_ = kNoStage;
    const std::uint32_t seen = image_presence(p_.parsing + b * p_.height * p_.width, p_.height,
                                              p_.width, p_.patch, presence_.data());
    if (p_.strategy == c::kRandom) {
      std::fill(state_.begin(), state_.end(), std::uint8_t{0});
      fill(0);
    } else {
      mask_with_region();
    }
    write();
    return seen;
  }

 private:
  void mask_with_region() {
    const int region = c::region_of(p_, b_);
    std::int64_t n_fr = 0;
    for (std::int64_t i = 0; i < L_; ++i) {
      const std::uint32_t touch = c::group_bits(presence_[i]);
      const bool in_r = (touch >> region) & 1u;
      touch_[i] = static_cast<std::uint8_t>(touch);
      state_[i] = in_r ? static_cast<std::uint8_t>(c::kHidden | c::kInRegion) : 0;
      n_fr += in_r;
    }
    const std::int64_t M = p_.num_mask;
    if (n_fr >= M) {
      gather([](std::uint8_t s, std::uint8_t) { return (s & c::kInRegion) != 0; });
      choose(c::kStageShrink, n_fr - M, 0, 0);
    } else if (p_.strategy == c::kCrfrP) {
      fix_count(walk(n_fr));
    } else if (p_.strategy == c::kCrfrR) {
      fill(n_fr);
    } else {
      whole_regions(n_fr);
    }
  }

  // The seven groups after R, in G order, each hiding its rounded share.
  std::int64_t walk(std::int64_t n_fr) {
    std::int64_t hidden = n_fr;
    for (int g = 0; g < c::kNumGroups; ++g) {
      gather([g](std::uint8_t s, std::uint8_t t) {
        return !(s & c::kInRegion) && c::first_group(t) == g;
      });
      const std::int64_t k = c::walk_quota(p_.num_mask, n_fr, L_,
                                           static_cast<std::int64_t>(cand_.size()));
      choose(c::kStageWalk, k, g, c::kHidden);
      hidden += k;
    }
    return hidden;
  }

  // Unhides only patches outside fr, so fr stays fully hidden.
  void fix_count(std::int64_t hidden) {
    const std::int64_t M = p_.num_mask;
    if (hidden < M) {
      fill_stage(c::kStageFixAdd, M - hidden);
    } else if (hidden > M) {
      gather([](std::uint8_t s, std::uint8_t) { return s == c::kHidden; });
      choose(c::kStageFixDrop, hidden - M, 0, 0);
    }
  }

  void whole_regions(std::int64_t n_fr) {
    int order[c::kNumRegions];
    c::region_order(p_, b_, order);
    std::int64_t hidden = n_fr;
    for (int j = 0; j < c::kNumRegions; ++j) {
      const int r = order[j];
      gather([r](std::uint8_t s, std::uint8_t t) {
        return ((t >> r) & 1u) && !(s & c::kHidden);
      });
      const std::int64_t k =
          std::min<std::int64_t>(static_cast<std::int64_t>(cand_.size()),
                                 p_.num_mask - hidden);
      choose(c::kStageWhole + j, k, 0, c::kHidden);
      hidden += k;
    }
    fill(hidden);
  }

  void fill(std::int64_t hidden) { fill_stage(c::kStageFill, p_.num_mask - hidden); }

  void fill_stage(std::uint32_t stage, std::int64_t k) {
    gather([](std::uint8_t s, std::uint8_t) { return !(s & c::kHidden); });
    choose(stage, k, 0, c::kHidden);
  }

  template <class Pred>
  void gather(Pred pred) {
    cand_.clear();
    for (std::int64_t i = 0; i < L_; ++i)
      if (pred(state_[i], touch_[i])) cand_.push_back(static_cast<std::int32_t>(i));
  }

  // Sets the state of the k gathered candidates with the smallest
  // composites of `stage` to new_state (kHidden: hide; 0: unhide entirely).
  void choose(std::uint32_t stage, std::int64_t k, int group, std::uint8_t new_state) {
    const auto n = static_cast<std::int64_t>(cand_.size());
    if (k <= 0 || n == 0) return;
    if (k >= n) {
      for (std::int32_t i : cand_) apply(i, new_state);
      return;
    }
    const std::uint32_t* words = stage_words(stage);
    keys_.clear();
    for (std::int32_t i : cand_) keys_.push_back(c::composite(words[i], i, group));
    std::nth_element(keys_.begin(), keys_.begin() + k, keys_.end());
    for (std::int64_t j = 0; j < k; ++j) apply(c::slot_of(keys_[j]), new_state);
  }

  // The draws of every patch for `stage`: a quarter of the Philox calls of
  // drawing candidate by candidate, and the walk's groups share one stage.
  const std::uint32_t* stage_words(std::uint32_t stage) {
    if (stage != words_stage_) {
      for (std::int64_t q = 0; q < (L_ + 3) / 4; ++q) {
        const philox::Words w = c::draw4(p_.seed, p_.offset, static_cast<std::uint64_t>(b_),
                                         stage, static_cast<std::uint64_t>(q));
        for (int j = 0; j < 4; ++j) words_[4 * q + j] = w.v[j];
      }
      words_stage_ = stage;
    }
    return words_.data();
  }

  void apply(std::int64_t i, std::uint8_t new_state) {
    if (new_state == c::kHidden) {
      state_[i] |= c::kHidden;
    } else {
      state_[i] = 0;
    }
  }

  void write() const {
    std::uint8_t* img = p_.img_mask + b_ * L_;
    std::uint8_t* fr = p_.fr_mask + b_ * L_;
    for (std::int64_t i = 0; i < L_; ++i) {
      img[i] = (state_[i] & c::kHidden) ? 1 : 0;
      fr[i] = (state_[i] & c::kInRegion) ? 1 : 0;
    }
  }

  const c::Params& p_;
  const std::int64_t L_;
  std::int64_t b_ = 0;
  static constexpr std::uint32_t kNoStage = ~0u;
  std::vector<std::uint32_t> presence_;
  std::vector<std::uint8_t> touch_, state_;
  std::vector<std::int32_t> cand_;
  std::vector<std::uint64_t> keys_;
  std::vector<std::uint32_t> words_;
  std::uint32_t words_stage_ = kNoStage;
};

}  // namespace

std::uint32_t crfrp_mask(const crfrp::Params& p, std::int64_t b0,
                         std::int64_t b1) {
  if (b1 <= b0 || c::num_patches(p) == 0) return 0;
  Masker masker(p);
  std::uint32_t seen = 0;
  for (std::int64_t b = b0; b < b1; ++b) seen |= masker.run(b);
  return seen;
}

}  // namespace cpu
}  // namespace fsfm
