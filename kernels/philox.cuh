// Philox4x32-10, the counter-based generator of Salmon et al. (SC'11).
//
// A draw is a pure function of (counter, key): no state, no sequence, so a
// GPU thread and a CPU loop that ask for the same counter get the same bits
// whatever order they run in. That is what makes the CUDA kernel and its CPU
// twin produce identical masks. Compiled by g++ and nvcc alike.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FSFM_PHILOX_HD __host__ __device__ __forceinline__
#else
#define FSFM_PHILOX_HD inline
#endif

namespace fsfm {
namespace philox {

struct Words {
  std::uint32_t v[4];
};

// Round multipliers and the Weyl key increments (golden ratio, sqrt(3) - 1).
constexpr std::uint32_t kMul0 = 0xD2511F53u;
constexpr std::uint32_t kMul1 = 0xCD9E8D57u;
constexpr std::uint32_t kBump0 = 0x9E3779B9u;
constexpr std::uint32_t kBump1 = 0xBB67AE85u;
constexpr int kRounds = 10;

FSFM_PHILOX_HD void mul_hi_lo(std::uint32_t a, std::uint32_t b,
                              std::uint32_t* hi, std::uint32_t* lo) {
  const std::uint64_t p = static_cast<std::uint64_t>(a) * b;
  *hi = static_cast<std::uint32_t>(p >> 32);
  *lo = static_cast<std::uint32_t>(p);
}

// One round: two 32x32->64 products, whose high halves are mixed with the
// other two words and the key, then the words are permuted.
FSFM_PHILOX_HD Words mix_round(const Words& c, std::uint32_t k0,
                           std::uint32_t k1) {
  std::uint32_t hi0, lo0, hi1, lo1;
  mul_hi_lo(kMul0, c.v[0], &hi0, &lo0);
  mul_hi_lo(kMul1, c.v[2], &hi1, &lo1);
  return Words{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
}

FSFM_PHILOX_HD Words philox4x32_10(Words counter, std::uint32_t k0,
                                   std::uint32_t k1) {
  for (int r = 0; r < kRounds; ++r) {
    counter = mix_round(counter, k0, k1);
    k0 += kBump0;
    k1 += kBump1;
  }
  return counter;
}

}  // namespace philox
}  // namespace fsfm
