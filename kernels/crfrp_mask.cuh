// CRFR-P masking (SPEC section 2): the parts shared by the CUDA kernel, its
// CPU twin and the host replay of the kernel.
//
// Host-compilable on purpose. Everything random is a pure function of
// (seed, offset, image, stage, patch) through Philox, and every "choose k of
// these candidates" takes the k candidates with the smallest (key, patch)
// pairs, so any implementation that follows the same stages yields the same
// masks bit for bit, whatever its threads do.
//
// The block program at the end is the CUDA kernel's body, written against an
// executor (threads, barrier, shared-memory atomics): the .cu file runs it
// with real threads, replay() below runs it on the CPU one thread after the
// other, which is how the kernel's logic is tested without a GPU.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "philox.cuh"
#include "region_presence.cuh"

namespace fsfm {
namespace crfrp {

// The label-presence pass is region_presence's, run by one block per image.
namespace presence = ::fsfm::cuda::presence;

enum Strategy : int { kCrfrP = 0, kCrfrR = 1, kFr = 2, kRandom = 3 };
// kRegionGiven: region_index[b] names the region of image b.
enum RegionMode : int { kRegionBatch = 0, kRegionImage = 1, kRegionGiven = 2 };

constexpr int kNumGroups = 8;   // brows eyes nose mouth boundary hair skin bg
constexpr int kNumRegions = 6;  // R is drawn from the first six groups
constexpr int kNoGroup = kNumGroups;

// Stage numbers: the `stage` field of every Philox counter. One stage per
// independent random choice, so no two choices ever share a draw.
enum Stage : std::uint32_t {
  kStageRegionBatch = 0,  // the batch's region (image field 0)
  kStageRegionImage = 1,  // the region of each image
  kStageWalk = 2,         // proportional fill, all groups at once
  kStageFixAdd = 3,       // exact-count fix-up: hide more
  kStageFixDrop = 4,      // exact-count fix-up: unhide
  kStageShrink = 5,       // |fr| >= M: unhide part of fr
  kStageFill = 6,         // uniform fill (random, crfr_r, fr's remainder)
  kStageOrder = 7,        // fr strategy: random order of the six regions
  kStageWhole = 8,        // fr strategy: 8 + j for the j-th region hidden
};

// Sort composites: group (4 bits) | key (31 bits) | patch (26 bits). The patch
// index in the low bits breaks key ties, so composites of distinct patches
// differ and "the k smallest" is always well defined.
constexpr int kPatchBits = 26;
constexpr int kGroupShift = kPatchBits + 31;
constexpr std::int64_t kMaxPatches = std::int64_t{1} << kPatchBits;
constexpr std::uint64_t kNotCandidate = ~std::uint64_t{0};

// Everything one call needs; pointers are host or device memory depending on
// who runs it. num_mask is M = int(mask_ratio * L), computed by the caller
// with the same double arithmetic as Python.
struct Params {
  const std::uint8_t* parsing;        // [batch, height, width], labels 0..10
  std::uint8_t* img_mask;             // [batch, L] out, 1 = hidden
  std::uint8_t* fr_mask;              // [batch, L] out, 1 = in the covered region
  const std::int64_t* region_index;   // [batch], read when region == kRegionGiven
  std::int64_t batch, height, width, patch;
  std::int64_t num_mask;
  int strategy;
  int region;
  std::uint64_t seed, offset;
};

FSFM_HD inline std::int64_t num_patches(const Params& p) {
  return (p.height / p.patch) * (p.width / p.patch);
}

// What the kernels assume; callers report a friendlier error first.
inline bool valid(const Params& p) {
  if (p.batch < 0 || p.height < 0 || p.width < 0 || p.patch <= 0) return false;
  if (p.height % p.patch != 0 || p.width % p.patch != 0) return false;
  const std::int64_t L = num_patches(p);
  if (L >= kMaxPatches || p.batch > (std::int64_t{1} << 32)) return false;
  if (p.num_mask < 0 || (L > 0 && p.num_mask >= L)) return false;
  if (p.strategy < kCrfrP || p.strategy > kRandom) return false;
  if (p.region < kRegionBatch || p.region > kRegionGiven) return false;
  return p.region != kRegionGiven || p.region_index != nullptr || p.batch == 0;
}

// ---------------------------------------------------------------- random draws

// Counter layout (Philox4x32-10, key = seed):
//   c0 = stage << 24 | slot >> 2,  c1 = image,  c2 = offset low,  c3 = offset high
// and the draw is word (slot & 3) of the output, so four consecutive slots
// share one Philox call. slot is the patch index (or region index) < 2^26.

// The four draws of slots 4 * quad .. 4 * quad + 3.
FSFM_HD inline philox::Words draw4(std::uint64_t seed, std::uint64_t offset,
                                   std::uint64_t image, std::uint32_t stage,
                                   std::uint64_t quad) {
  const philox::Words counter{{(stage << 24) | static_cast<std::uint32_t>(quad),
                               static_cast<std::uint32_t>(image),
                               static_cast<std::uint32_t>(offset),
                               static_cast<std::uint32_t>(offset >> 32)}};
  return philox::philox4x32_10(counter, static_cast<std::uint32_t>(seed),
                               static_cast<std::uint32_t>(seed >> 32));
}

FSFM_HD inline std::uint32_t draw(std::uint64_t seed, std::uint64_t offset,
                                  std::uint64_t image, std::uint32_t stage,
                                  std::uint64_t slot) {
  return draw4(seed, offset, image, stage, slot >> 2).v[slot & 3];
}

// The composite of a slot from its draw: see the layout above.
FSFM_HD inline std::uint64_t composite(std::uint32_t word, std::int64_t slot, int group) {
  return (static_cast<std::uint64_t>(group) << kGroupShift) |
         (static_cast<std::uint64_t>(word >> 1) << kPatchBits) |
         static_cast<std::uint64_t>(slot);
}

FSFM_HD inline std::uint64_t sort_key(const Params& p, std::int64_t image,
                                      std::uint32_t stage, std::int64_t slot,
                                      int group) {
  return composite(draw(p.seed, p.offset, static_cast<std::uint64_t>(image), stage,
                        static_cast<std::uint64_t>(slot)),
                   slot, group);
}

FSFM_HD inline std::int64_t slot_of(std::uint64_t c) {
  return static_cast<std::int64_t>(c & (kMaxPatches - 1));
}

// Multiply-shift maps a 32-bit word to 0..5 (bias below 2^-29).
FSFM_HD inline int region_from_word(std::uint32_t word) {
  return static_cast<int>((static_cast<std::uint64_t>(word) * kNumRegions) >> 32);
}

FSFM_HD inline int region_of(const Params& p, std::int64_t image) {
  if (p.region == kRegionGiven) return static_cast<int>(p.region_index[image]);
  if (p.region == kRegionImage) {
    return region_from_word(draw(p.seed, p.offset, static_cast<std::uint64_t>(image),
                                 kStageRegionImage, 0));
  }
  return region_from_word(draw(p.seed, p.offset, 0, kStageRegionBatch, 0));
}

// fr strategy: order[j] is the region hidden j-th, a uniform permutation.
FSFM_HD inline void region_order(const Params& p, std::int64_t image,
                                 int order[kNumRegions]) {
  std::uint64_t keys[kNumRegions];
  for (int r = 0; r < kNumRegions; ++r) keys[r] = sort_key(p, image, kStageOrder, r, 0);
  for (int r = 0; r < kNumRegions; ++r) {
    int rank = 0;
    for (int s = 0; s < kNumRegions; ++s) rank += keys[s] < keys[r];
    order[rank] = r;
  }
}

// ---------------------------------------------------------------- groups

// Bit g set iff the patch touches group g of G, from its label-presence bits.
FSFM_HD inline std::uint32_t group_bits(std::uint32_t presence) {
  const bool skin = presence & (1u << 1);
  const bool hair_or_bg = presence & ((1u << 10) | 1u);
  return ((presence & 0x00Cu) ? 1u : 0u)           // brows 2, 3
         | ((presence & 0x030u) ? 2u : 0u)         // eyes 4, 5
         | ((presence & 0x040u) ? 4u : 0u)         // nose 6
         | ((presence & 0x380u) ? 8u : 0u)         // mouth 7, 8, 9
         | ((skin && hair_or_bg) ? 16u : 0u)       // boundary
         | ((presence & 0x400u) ? 32u : 0u)        // hair 10
         | (skin ? 64u : 0u)                       // skin 1
         | ((presence & 0x001u) ? 128u : 0u);      // background 0
}

// The walk gives a patch to the first group of G it touches that is not R
// (R's patches are claimed before the walk starts).
FSFM_HD inline int first_group(std::uint32_t touch) {
  for (int g = 0; g < kNumGroups; ++g)
    if ((touch >> g) & 1u) return g;
  return kNoGroup;  // only for labels above 10, which callers reject
}

// round(ratio * candidates) with ratio = (M - |fr|) / (L - |fr|) in double and
// round-half-to-even, exactly as the reference's float64 torch.round.
FSFM_HD inline std::int64_t walk_quota(std::int64_t num_mask, std::int64_t n_fr,
                                       std::int64_t num_patches,
                                       std::int64_t candidates) {
  const double ratio = static_cast<double>(num_mask - n_fr) /
                       static_cast<double>(num_patches - n_fr);
  const auto k = static_cast<std::int64_t>(rint(ratio * static_cast<double>(candidates)));
  return k < candidates ? k : candidates;
}

// ---------------------------------------------------------------- launch shape

constexpr int kMinThreads = 128;
constexpr int kMaxThreads = 512;
// Shared counters: 0..7 walk group sizes, 8 |fr|, 9..14 fr-strategy sizes.
constexpr int kCountRegion = kNumGroups;
constexpr int kCountWhole = kNumGroups + 1;
constexpr int kNumCounters = 16;

enum StateBit : std::uint8_t { kHidden = 1, kInRegion = 2 };

struct Launch {
  int threads;                 // one block of `threads` per image
  std::size_t smem_bytes;
  presence::Geometry g;        // presence phase: vec, block_x, block_y
  int row_groups;              // patch rows read concurrently
};

// Shared memory: composites u64[L] (their first 4L bytes hold the u32
// presence bits until the walk overwrites them), counters, touch u8[L],
// state u8[L].
FSFM_HD inline std::size_t smem_bytes(std::int64_t L) {
  const std::size_t n = static_cast<std::size_t>(L);
  return ((n * 8 + kNumCounters * 4 + 2 * n) + 15) / 16 * 16;
}

// threads <= 0 picks the default: one thread per patch, 128..512.
FSFM_HD inline bool make_launch(const Params& p, std::uintptr_t address, int threads,
                                Launch* out) {
  if (!presence::make_geometry(p.batch, p.height, p.width, p.patch, address, &out->g))
    return false;
  const std::int64_t L = num_patches(p);
  if (threads <= 0) {
    const std::int64_t t = (L + 31) / 32 * 32;
    threads = static_cast<int>(t < kMinThreads ? kMinThreads : (t > kMaxThreads ? kMaxThreads : t));
  }
  presence::Geometry& g = out->g;
  // The whole image is one block's work: a tile is a full patch row.
  g.tile_cols = g.grid_w;
  g.num_tiles = 1;
  const std::int64_t cols = g.width / g.vec;
  const std::int64_t bx = cols < threads ? cols : threads;
  g.block_x = bx < 1 ? 1 : static_cast<int>(bx);
  const std::int64_t rows = threads / g.block_x;
  out->row_groups = static_cast<int>(rows < g.grid_h ? rows : (g.grid_h < 1 ? 1 : g.grid_h));
  const std::int64_t by = threads / (static_cast<std::int64_t>(g.block_x) * out->row_groups);
  g.block_y = static_cast<int>(by < 1 ? 1 : (by < g.patch ? by : g.patch));
  out->threads = threads;
  out->smem_bytes = smem_bytes(L);
  return true;
}

struct Shared {
  std::uint64_t* comp;
  std::uint32_t* presence;
  int* counters;
  std::uint8_t* touch;
  std::uint8_t* state;
};

// base must be 8-byte aligned.
FSFM_HD inline Shared carve(unsigned char* base, std::int64_t L) {
  Shared s;
  s.comp = reinterpret_cast<std::uint64_t*>(base);
  s.presence = reinterpret_cast<std::uint32_t*>(base);
  s.counters = reinterpret_cast<int*>(base + 8 * L);
  s.touch = base + 8 * L + kNumCounters * 4;
  s.state = s.touch + L;
  return s;
}

// ---------------------------------------------------------------- block program
//
// X, the executor: threads(), for_each_thread(f) (f(tid) for this thread, or
// for every thread in turn), sync() (barrier), atomic_or, atomic_add on
// shared memory. Phases are separated by sync(); inside a phase a thread
// writes only the entries of its own patches i = tid, tid + T, ...

template <class X, class F>
FSFM_HD void for_each_patch(X& x, std::int64_t L, F f) {
  const int T = x.threads();
  x.for_each_thread([&](int t) {
    for (std::int64_t i = t; i < L; i += T) f(i);
  });
}

// Number of composites below c: a candidate's rank among all candidates
// (non-candidates hold kNotCandidate and never count).
// 32-bit counters: L < 2^26, and this loop is the kernel's hot spot (every
// thread of a warp reads the same comp[j]: a shared-memory broadcast).
FSFM_HD inline int count_less(const std::uint64_t* comp, std::int64_t L,
                              std::uint64_t c) {
  const int n_all = static_cast<int>(L);
  int n = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll 4
#endif
  for (int j = 0; j < n_all; ++j) n += comp[j] < c ? 1 : 0;
  return n;
}

// Marks the k candidates with the smallest (key, patch) of `stage`; ncand,
// the number of candidates, must be known to every thread. Every path that
// touches shared memory ends with a barrier.
template <class X, class Cand, class Mark>
FSFM_HD void select(X& x, const Params& p, const Shared& s, std::int64_t b,
                    std::int64_t L, std::uint32_t stage, std::int64_t k,
                    std::int64_t ncand, Cand cand, Mark mark) {
  if (k <= 0 || ncand <= 0) return;
  if (k >= ncand) {
    for_each_patch(x, L, [&](std::int64_t i) { if (cand(i)) mark(i); });
    x.sync();
    return;
  }
  for_each_patch(x, L, [&](std::int64_t i) {
    s.comp[i] = cand(i) ? sort_key(p, b, stage, i, 0) : kNotCandidate;
  });
  x.sync();
  for_each_patch(x, L, [&](std::int64_t i) {
    const std::uint64_t c = s.comp[i];
    if (c != kNotCandidate && count_less(s.comp, L, c) < k) mark(i);
  });
  x.sync();
}

template <int V, class X>
FSFM_HD void read_presence(X& x, const Params& p, const Launch& ln, const Shared& s,
                           std::int64_t b) {
  const presence::Geometry& g = ln.g;
  const std::int64_t L = g.grid_h * g.grid_w;
  for_each_patch(x, L, [&](std::int64_t i) { s.presence[i] = 0; });
  x.sync();
  x.for_each_thread([&](int t) {
    const int tx = t % g.block_x;
    const int rest = t / g.block_x;
    const int ty = rest % g.block_y;
    const int rg = rest / g.block_y;
    if (rg >= ln.row_groups) return;
    for (std::int64_t row = rg; row < g.grid_h; row += ln.row_groups) {
      const presence::Block blk{b, row, 0, g.grid_w};
      std::uint32_t* dst = s.presence + row * g.grid_w;
      presence::presence_thread<V>(p.parsing, g, blk, tx, ty,
                                   [&](std::int64_t col, std::uint32_t bits) {
                                     x.atomic_or(dst + col, bits);
                                   });
    }
  });
  x.sync();
}

// touch/state per patch, |fr| and the walk's group sizes into the counters.
template <class X>
FSFM_HD void classify(X& x, const Shared& s, std::int64_t L, int region) {
  for_each_patch(x, L, [&](std::int64_t i) {
    const std::uint32_t touch = group_bits(s.presence[i]);
    const bool in_r = region >= 0 && ((touch >> region) & 1u);
    s.touch[i] = static_cast<std::uint8_t>(touch);
    s.state[i] = in_r ? static_cast<std::uint8_t>(kHidden | kInRegion) : 0;
    const int g = in_r ? kCountRegion : first_group(touch);
    if (in_r || g < kNumGroups) x.atomic_add(s.counters + g, 1);
  });
  x.sync();
}

// CRFR-P step 2 before the fix-up. The groups' candidate sets are disjoint
// (a patch belongs to the first group it touches), so one ranking over
// (group, key, patch) serves all seven groups. Returns the hidden count.
template <class X>
FSFM_HD std::int64_t walk(X& x, const Params& p, const Shared& s, std::int64_t b,
                          std::int64_t L, std::int64_t n_fr) {
  std::int64_t quota[kNumGroups], start[kNumGroups];
  std::int64_t hidden = n_fr, before = 0;
  for (int g = 0; g < kNumGroups; ++g) {
    quota[g] = walk_quota(p.num_mask, n_fr, L, s.counters[g]);
    start[g] = before;
    before += s.counters[g];
    hidden += quota[g];
  }
  for_each_patch(x, L, [&](std::int64_t i) {
    const int g = (s.state[i] & kInRegion) ? kNoGroup : first_group(s.touch[i]);
    s.comp[i] = g < kNumGroups ? sort_key(p, b, kStageWalk, i, g) : kNotCandidate;
  });
  x.sync();
  for_each_patch(x, L, [&](std::int64_t i) {
    const std::uint64_t c = s.comp[i];
    if (c == kNotCandidate) return;
    const int g = static_cast<int>(c >> kGroupShift);
    if (count_less(s.comp, L, c) - start[g] < quota[g]) s.state[i] |= kHidden;
  });
  x.sync();
  return hidden;
}

template <class X>
FSFM_HD void fix_count(X& x, const Params& p, const Shared& s, std::int64_t b,
                       std::int64_t L, std::int64_t n_fr, std::int64_t hidden) {
  const std::int64_t M = p.num_mask;
  if (hidden < M) {
    select(x, p, s, b, L, kStageFixAdd, M - hidden, L - hidden,
           [&](std::int64_t i) { return !(s.state[i] & kHidden); },
           [&](std::int64_t i) { s.state[i] |= kHidden; });
  } else if (hidden > M) {
    select(x, p, s, b, L, kStageFixDrop, hidden - M, hidden - n_fr,
           [&](std::int64_t i) { return s.state[i] == kHidden; },
           [&](std::int64_t i) { s.state[i] = 0; });
  }
}

// Hides uniformly random visible patches until M are hidden.
template <class X>
FSFM_HD void fill(X& x, const Params& p, const Shared& s, std::int64_t b,
                  std::int64_t L, std::int64_t hidden) {
  select(x, p, s, b, L, kStageFill, p.num_mask - hidden, L - hidden,
         [&](std::int64_t i) { return !(s.state[i] & kHidden); },
         [&](std::int64_t i) { s.state[i] |= kHidden; });
}

// fr strategy: whole regions in a random order, each cut to what M allows.
template <class X>
FSFM_HD void whole_regions(X& x, const Params& p, const Shared& s, std::int64_t b,
                           std::int64_t L, std::int64_t n_fr) {
  int order[kNumRegions];
  region_order(p, b, order);
  std::int64_t hidden = n_fr;
  for (int j = 0; j < kNumRegions; ++j) {
    const int r = order[j];
    auto cand = [&](std::int64_t i) {
      return ((s.touch[i] >> r) & 1u) && !(s.state[i] & kHidden);
    };
    for_each_patch(x, L, [&](std::int64_t i) {
      if (cand(i)) x.atomic_add(s.counters + kCountWhole + j, 1);
    });
    x.sync();
    const std::int64_t n = s.counters[kCountWhole + j];
    const std::int64_t want = p.num_mask - hidden;
    const std::int64_t k = n < want ? n : want;
    select(x, p, s, b, L, kStageWhole + j, k, n, cand,
           [&](std::int64_t i) { s.state[i] |= kHidden; });
    hidden += k;
  }
  fill(x, p, s, b, L, hidden);
}

template <int V, class X>
FSFM_HD void run_block(X& x, const Params& p, const Launch& ln, const Shared& s,
                       std::int64_t b) {
  const std::int64_t L = num_patches(p);
  for_each_patch(x, kNumCounters, [&](std::int64_t i) { s.counters[i] = 0; });
  if (p.strategy == kRandom) {
    // No region and no map needed: one uniform choice of M patches.
    for_each_patch(x, L, [&](std::int64_t i) { s.state[i] = 0; });
    x.sync();
    fill(x, p, s, b, L, 0);
  } else {
    read_presence<V>(x, p, ln, s, b);
    classify(x, s, L, region_of(p, b));
    const std::int64_t n_fr = s.counters[kCountRegion];
    if (n_fr >= p.num_mask) {
      // CRFR-P step 3 (all strategies): unhide |fr| - M random patches of fr.
      select(x, p, s, b, L, kStageShrink, n_fr - p.num_mask, n_fr,
             [&](std::int64_t i) { return (s.state[i] & kInRegion) != 0; },
             [&](std::int64_t i) { s.state[i] = 0; });
    } else if (p.strategy == kCrfrP) {
      fix_count(x, p, s, b, L, n_fr, walk(x, p, s, b, L, n_fr));
    } else if (p.strategy == kCrfrR) {
      fill(x, p, s, b, L, n_fr);
    } else {
      whole_regions(x, p, s, b, L, n_fr);
    }
  }
  for_each_patch(x, L, [&](std::int64_t i) {
    p.img_mask[b * L + i] = (s.state[i] & kHidden) ? 1 : 0;
    p.fr_mask[b * L + i] = (s.state[i] & kInRegion) ? 1 : 0;
  });
}

// ---------------------------------------------------------------- host replay
// For g++ only: under nvcc the block program is instantiated for the device,
// where these host-only executor calls do not exist.
#if !defined(__CUDACC__)

// The kernel's threads run one after another; a barrier is then a no-op.
struct SerialBlock {
  int nthreads;
  int threads() const { return nthreads; }
  template <class F>
  void for_each_thread(F f) const {
    for (int t = 0; t < nthreads; ++t) f(t);
  }
  void sync() const {}
  void atomic_or(std::uint32_t* a, std::uint32_t v) const { *a |= v; }
  void atomic_add(int* a, int v) const { *a += v; }
};

// Runs the CUDA kernel's block program for images [b0, b1) on host memory,
// with the launch shape the kernel would use (threads <= 0) or a forced
// thread count. Returns false when the shape is not launchable.
inline bool replay(const Params& p, int threads, std::int64_t b0, std::int64_t b1) {
  Launch ln;
  if (!valid(p) || !make_launch(p, reinterpret_cast<std::uintptr_t>(p.parsing), threads, &ln))
    return false;
  std::vector<std::uint64_t> smem((ln.smem_bytes + 7) / 8);
  const Shared s = carve(reinterpret_cast<unsigned char*>(smem.data()), num_patches(p));
  const SerialBlock x{ln.threads};
  for (std::int64_t b = b0; b < b1; ++b) {
    switch (ln.g.vec) {
      case 16: run_block<16>(x, p, ln, s, b); break;
      case 8: run_block<8>(x, p, ln, s, b); break;
      case 4: run_block<4>(x, p, ln, s, b); break;
      case 2: run_block<2>(x, p, ln, s, b); break;
      default: run_block<1>(x, p, ln, s, b); break;
    }
  }
  return true;
}

#endif  // !defined(__CUDACC__)

}  // namespace crfrp
}  // namespace fsfm
