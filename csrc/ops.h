// Torch-facing declarations shared by the op wrappers in csrc/.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace fsfm {

// Highest valid LaPa-11 label; the masks have one bit per label.
constexpr int kMaxLabel = 10;

// Throws (ValueError / TypeError on the Python side) unless parsing is a
// uint8 [B, H, W] tensor and patch_size is positive and divides H and W.
void check_region_presence_args(const at::Tensor& parsing,
                                std::int64_t patch_size);

// Raises the error for a parsing map holding a label above kMaxLabel.
[[noreturn]] void fail_label_range(const at::Tensor& parsing);

}  // namespace fsfm
