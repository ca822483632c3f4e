// Torch-facing pieces of fsfm_fast::crfrp_mask shared by its CPU and CUDA
// registrations.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include <ATen/core/Tensor.h>

#include "crfrp_mask.cuh"

namespace fsfm {

// A checked call: contiguous inputs, allocated bool outputs, and the Params
// that point into them. Holds the tensors so the pointers stay valid.
struct CrfrpCall {
  at::Tensor parsing, region_index, img_mask, fr_mask;
  crfrp::Params params;
};

// Every check that needs no pass over the data (shape, dtype, device,
// patch size, ratio, strategy, region, region_index shape); throws
// ValueError / TypeError on the Python side. Label and region_index values
// are checked by the device-specific callers.
CrfrpCall prepare_crfrp(const at::Tensor& parsing, std::int64_t patch_size,
                        double mask_ratio, std::string_view strategy,
                        std::string_view region,
                        const std::optional<at::Tensor>& region_index,
                        std::int64_t seed, std::int64_t offset);

// Errors for values found on the device: a label above 10 (pass the largest
// label) or a region_index outside 0..5 (pass its min and max).
[[noreturn]] void fail_crfrp_label(std::int64_t top_label);
void check_crfrp_region_range(std::int64_t lo, std::int64_t hi);

}  // namespace fsfm
