// Schema, argument checks and the CPU kernels of fsfm_fast::crfrp_mask, plus
// fsfm_fast_testing::crfrp_mask_replay, the CUDA kernel's block program run on
// the CPU: a test hook, registered in its own library so that it is not part
// of the public op set, which lets pytest compare the GPU logic with the CPU
// twin anywhere.
#include "crfrp_mask.h"

#include <algorithm>
#include <atomic>
#include <tuple>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "fsfm_cpu.h"
#include "ops.h"

namespace fsfm {
namespace {

namespace c = crfrp;

int parse_strategy(std::string_view s) {
  if (s == "crfr_p") return c::kCrfrP;
  if (s == "crfr_r") return c::kCrfrR;
  if (s == "fr") return c::kFr;
  TORCH_CHECK_VALUE(s == "random",
                    "crfrp_mask: strategy must be one of crfr_p, crfr_r, fr, random; got '", s,
                    "'");
  return c::kRandom;
}

int parse_region(std::string_view s, bool given) {
  if (given) return c::kRegionGiven;
  if (s == "batch") return c::kRegionBatch;
  TORCH_CHECK_VALUE(s == "image", "crfrp_mask: region must be 'batch' or 'image', got '", s,
                    "'");
  return c::kRegionImage;
}

void check_parsing(const at::Tensor& parsing, std::int64_t patch_size) {
  TORCH_CHECK_VALUE(parsing.dim() == 3,
                    "crfrp_mask: parsing must be a 3-D [B, H, W] tensor, got shape ",
                    parsing.sizes());
  TORCH_CHECK_TYPE(parsing.scalar_type() == at::kByte,
                   "crfrp_mask: parsing must have dtype uint8, got ", parsing.scalar_type());
  TORCH_CHECK_VALUE(patch_size > 0, "crfrp_mask: patch_size must be positive, got ", patch_size);
  const auto h = parsing.size(1), w = parsing.size(2);
  TORCH_CHECK_VALUE(h % patch_size == 0 && w % patch_size == 0, "crfrp_mask: parsing height ", h,
                    " and width ", w, " must both be divisible by patch_size ", patch_size);
  const std::int64_t L = (h / patch_size) * (w / patch_size);
  TORCH_CHECK_VALUE(L < c::kMaxPatches, "crfrp_mask: at most ", c::kMaxPatches - 1,
                    " patches per image, got ", L);
  TORCH_CHECK_VALUE(parsing.size(0) <= (std::int64_t{1} << 32),
                    "crfrp_mask: at most 2^32 images per call, got ", parsing.size(0));
}

void check_region_index(const at::Tensor& ri, const at::Tensor& parsing) {
  TORCH_CHECK_TYPE(ri.scalar_type() == at::kLong,
                   "crfrp_mask: region_index must have dtype int64, got ", ri.scalar_type());
  TORCH_CHECK_VALUE(ri.dim() == 1 && ri.size(0) == parsing.size(0),
                    "crfrp_mask: region_index must have shape (", parsing.size(0), ",), got ",
                    ri.sizes());
  TORCH_CHECK_VALUE(ri.device() == parsing.device(),
                    "crfrp_mask: region_index is on ", ri.device(), " but parsing is on ",
                    parsing.device());
}

// Pixels per parallel chunk below which threading costs more than it saves.
constexpr std::int64_t kGrainPixels = 32768;

std::int64_t grain(const CrfrpCall& call) {
  const std::int64_t pixels = std::max<std::int64_t>(call.params.height * call.params.width, 1);
  return std::max<std::int64_t>(1, kGrainPixels / pixels);
}

void check_region_values_cpu(const CrfrpCall& call) {
  if (call.region_index.defined() && call.region_index.numel() > 0) {
    check_crfrp_region_range(call.region_index.min().item<std::int64_t>(),
                             call.region_index.max().item<std::int64_t>());
  }
}

std::tuple<at::Tensor, at::Tensor> crfrp_mask_cpu(
    const at::Tensor& parsing, std::int64_t patch_size, double mask_ratio,
    std::string_view strategy, std::string_view region,
    const std::optional<at::Tensor>& region_index, std::int64_t seed, std::int64_t offset,
    bool /*check_labels*/) {
  CrfrpCall call = prepare_crfrp(parsing, patch_size, mask_ratio, strategy, region,
                                 region_index, seed, offset);
  check_region_values_cpu(call);
  // Labels are checked whatever check_labels says, because here the check is
  // free: it rides on the masking pass itself. Every chunk reports the label
  // bits it saw, and a bad label discards the result.
  std::atomic<std::uint32_t> seen{0};
  at::parallel_for(0, call.params.batch, grain(call), [&](std::int64_t b0, std::int64_t b1) {
    seen.fetch_or(cpu::crfrp_mask(call.params, b0, b1), std::memory_order_relaxed);
  });
  if (seen.load() >> (kMaxLabel + 1)) {
    fail_crfrp_label(call.parsing.max().item<std::uint8_t>());
  }
  return {call.img_mask, call.fr_mask};
}

std::tuple<at::Tensor, at::Tensor> crfrp_mask_replay_cpu(
    const at::Tensor& parsing, std::int64_t patch_size, double mask_ratio,
    std::string_view strategy, std::string_view region,
    const std::optional<at::Tensor>& region_index, std::int64_t seed, std::int64_t offset,
    std::int64_t threads) {
  CrfrpCall call = prepare_crfrp(parsing, patch_size, mask_ratio, strategy, region,
                                 region_index, seed, offset);
  check_region_values_cpu(call);
  if (call.parsing.numel() > 0) {
    const int top = call.parsing.max().item<std::uint8_t>();
    if (top > kMaxLabel) fail_crfrp_label(top);
  }
  TORCH_CHECK_VALUE(threads >= 0 && threads <= c::kMaxThreads,
                    "crfrp_mask_replay: threads must be in 0..", c::kMaxThreads, ", got ", threads);
  at::parallel_for(0, call.params.batch, grain(call), [&](std::int64_t b0, std::int64_t b1) {
    TORCH_INTERNAL_ASSERT(c::replay(call.params, static_cast<int>(threads), b0, b1));
  });
  return {call.img_mask, call.fr_mask};
}

}  // namespace

CrfrpCall prepare_crfrp(const at::Tensor& parsing, std::int64_t patch_size, double mask_ratio,
                        std::string_view strategy, std::string_view region,
                        const std::optional<at::Tensor>& region_index, std::int64_t seed,
                        std::int64_t offset) {
  check_parsing(parsing, patch_size);
  TORCH_CHECK_VALUE(mask_ratio > 0.0 && mask_ratio < 1.0,
                    "crfrp_mask: mask_ratio must be in (0, 1), got ", mask_ratio);
  CrfrpCall call;
  c::Params& p = call.params;
  p.strategy = parse_strategy(strategy);
  const bool given = region_index.has_value() && region_index->defined();
  p.region = parse_region(region, given);
  call.parsing = parsing.contiguous();
  if (given) {
    check_region_index(*region_index, parsing);
    call.region_index = region_index->contiguous();
  }
  p.batch = parsing.size(0);
  p.height = parsing.size(1);
  p.width = parsing.size(2);
  p.patch = patch_size;
  const std::int64_t L = c::num_patches(p);
  // int(mask_ratio * L) in double, as Python computes it.
  p.num_mask = static_cast<std::int64_t>(mask_ratio * static_cast<double>(L));
  p.seed = static_cast<std::uint64_t>(seed);
  p.offset = static_cast<std::uint64_t>(offset);
  const auto opts = call.parsing.options().dtype(at::kBool);
  call.img_mask = at::empty({p.batch, L}, opts);
  call.fr_mask = at::empty({p.batch, L}, opts);
  p.parsing = call.parsing.const_data_ptr<std::uint8_t>();
  p.region_index = given ? call.region_index.const_data_ptr<std::int64_t>() : nullptr;
  // bool tensors hold one byte per element, 0 or 1: the kernels' uint8 output.
  p.img_mask = reinterpret_cast<std::uint8_t*>(call.img_mask.mutable_data_ptr<bool>());
  p.fr_mask = reinterpret_cast<std::uint8_t*>(call.fr_mask.mutable_data_ptr<bool>());
  TORCH_INTERNAL_ASSERT(c::valid(p), "crfrp_mask: parameters passed the checks but are invalid");
  return call;
}

void fail_crfrp_label(std::int64_t top_label) {
  TORCH_CHECK_VALUE(false, "crfrp_mask: parsing labels must be in 0..", kMaxLabel,
                    " (LaPa-11), found max label ", top_label);
  __builtin_unreachable();
}

void check_crfrp_region_range(std::int64_t lo, std::int64_t hi) {
  TORCH_CHECK_VALUE(lo >= 0 && hi < c::kNumRegions, "crfrp_mask: region_index must be in 0..",
                    c::kNumRegions - 1,
                    " (brows, eyes, nose, mouth, boundary, hair), got values in [", lo, ", ",
                    hi, "]");
}

}  // namespace fsfm

// check_labels=false skips the label check where it costs a host sync (CUDA):
// for callers whose data was validated where it was loaded. A label above 10
// then touches no group; the masks keep their guarantees.
TORCH_LIBRARY_FRAGMENT(fsfm_fast, m) {
  m.def(
      "crfrp_mask(Tensor parsing, int patch_size, float mask_ratio, str strategy, str region, "
      "Tensor? region_index, int seed, int offset, bool check_labels=True) -> "
      "(Tensor img_mask, Tensor fr_mask)");
}

TORCH_LIBRARY_IMPL(fsfm_fast, CPU, m) {
  m.impl("crfrp_mask", &fsfm::crfrp_mask_cpu);
}

TORCH_LIBRARY(fsfm_fast_testing, m) {
  m.def(
      "crfrp_mask_replay(Tensor parsing, int patch_size, float mask_ratio, str strategy, "
      "str region, Tensor? region_index, int seed, int offset, int threads=0) -> "
      "(Tensor img_mask, Tensor fr_mask)");
}

TORCH_LIBRARY_IMPL(fsfm_fast_testing, CPU, m) {
  m.impl("crfrp_mask_replay", &fsfm::crfrp_mask_replay_cpu);
}
