// Schema, argument checks and the CPU kernel of fsfm_fast::region_presence.
#include <algorithm>
#include <atomic>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "fsfm_cpu.h"
#include "ops.h"

namespace fsfm {

void check_region_presence_args(const at::Tensor& parsing,
                                std::int64_t patch_size) {
  TORCH_CHECK_VALUE(parsing.dim() == 3,
                    "region_presence: parsing must be a 3-D [B, H, W] tensor, "
                    "got shape ", parsing.sizes());
  TORCH_CHECK_TYPE(parsing.scalar_type() == at::kByte,
                   "region_presence: parsing must have dtype uint8, got ",
                   parsing.scalar_type());
  TORCH_CHECK_VALUE(patch_size > 0,
                    "region_presence: patch_size must be positive, got ",
                    patch_size);
  const auto h = parsing.size(1), w = parsing.size(2);
  TORCH_CHECK_VALUE(h % patch_size == 0 && w % patch_size == 0,
                    "region_presence: parsing height ", h, " and width ", w,
                    " must both be divisible by patch_size ", patch_size);
}

void fail_label_range(const at::Tensor& parsing) {
  const int top = parsing.max().item<std::uint8_t>();
  TORCH_CHECK_VALUE(false, "region_presence: parsing holds label ", top,
                    "; valid labels are 0..", kMaxLabel, " (LaPa-11)");
  __builtin_unreachable();
}

namespace {

// Pixels per parallel chunk below which threading costs more than it saves
// (the value ATen uses for its own elementwise loops).
constexpr std::int64_t kGrainPixels = 32768;

at::Tensor region_presence_cpu(const at::Tensor& parsing,
                               std::int64_t patch_size) {
  check_region_presence_args(parsing, patch_size);
  const at::Tensor x = parsing.contiguous();
  const auto batch = x.size(0), h = x.size(1), w = x.size(2);
  at::Tensor out = at::empty({batch, (h / patch_size) * (w / patch_size)},
                             x.options().dtype(at::kShort));
  const std::uint8_t* src = x.const_data_ptr<std::uint8_t>();
  std::int16_t* dst = out.mutable_data_ptr<std::int16_t>();
  // The label range check rides on the same pass: every chunk reports the
  // label bits it saw.
  std::atomic<std::uint32_t> seen{0};
  const std::int64_t pixels = std::max<std::int64_t>(h * w, 1);
  const std::int64_t grain =
      std::max<std::int64_t>(1, kGrainPixels / pixels);
  at::parallel_for(0, batch, grain, [&](std::int64_t b0, std::int64_t b1) {
    seen.fetch_or(cpu::region_presence(src, dst, h, w, patch_size, b0, b1),
                  std::memory_order_relaxed);
  });
  if (seen.load() >> (kMaxLabel + 1)) fail_label_range(x);
  return out;
}

}  // namespace
}  // namespace fsfm

TORCH_LIBRARY_FRAGMENT(fsfm_fast, m) {
  m.def("region_presence(Tensor parsing, int patch_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(fsfm_fast, CPU, m) {
  m.impl("region_presence", &fsfm::region_presence_cpu);
}
