#include "fsfm_cpu.h"

#include <cstddef>
#include <vector>

namespace fsfm {
namespace cpu {
namespace {

inline std::uint32_t label_bit(std::uint32_t label) {
  return 1u << (label < 31u ? label : 31u);
}

// Two accumulators halve the loop-carried OR chain on long patch rows.
inline std::uint32_t row_bits(const std::uint8_t* px, std::int64_t n) {
  std::uint32_t m0 = 0, m1 = 0;
  std::int64_t x = 0;
  for (; x + 1 < n; x += 2) {
    m0 |= label_bit(px[x]);
    m1 |= label_bit(px[x + 1]);
  }
  if (x < n) m0 |= label_bit(px[x]);
  return m0 | m1;
}

}  // namespace

std::uint32_t region_presence(const std::uint8_t* parsing, std::int16_t* out,
                              std::int64_t height, std::int64_t width,
                              std::int64_t patch, std::int64_t b0,
                              std::int64_t b1) {
  const std::int64_t grid_h = height / patch;
  const std::int64_t grid_w = width / patch;
  std::vector<std::uint32_t> acc(static_cast<std::size_t>(grid_w));
  std::uint32_t seen = 0;
  for (std::int64_t b = b0; b < b1; ++b) {
    const std::uint8_t* image = parsing + b * height * width;
    std::int16_t* dst = out + b * grid_h * grid_w;
    for (std::int64_t r = 0; r < grid_h; ++r) {
      for (auto& a : acc) a = 0;
      // Row-by-row keeps the reads sequential; acc holds one mask per patch
      // column of the current patch row.
      for (std::int64_t y = r * patch; y < (r + 1) * patch; ++y) {
        const std::uint8_t* row = image + y * width;
        for (std::int64_t c = 0; c < grid_w; ++c) {
          acc[c] |= row_bits(row + c * patch, patch);
        }
      }
      for (std::int64_t c = 0; c < grid_w; ++c) {
        seen |= acc[c];
        dst[r * grid_w + c] = static_cast<std::int16_t>(acc[c] & 0xFFFFu);
      }
    }
  }
  return seen;
}

}  // namespace cpu
}  // namespace fsfm
