// CUDA kernel registration of fsfm_fast::region_presence.
//
// c10/cuda headers give the same current-stream and guard API as
// ATen/cuda/CUDAContext.h without pulling in the cuBLAS/cuSPARSE headers.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../kernels/fsfm_kernels.h"
#include "ops.h"

namespace fsfm {
namespace {

at::Tensor region_presence_cuda(const at::Tensor& parsing,
                                std::int64_t patch_size) {
  check_region_presence_args(parsing, patch_size);
  const c10::cuda::CUDAGuard guard(parsing.device());
  const at::Tensor x = parsing.contiguous();
  // One reduction and a host sync: a bad label must fail here, before the
  // launch, instead of silently setting bits above 10.
  if (x.numel() > 0 && x.max().item<std::uint8_t>() > kMaxLabel) {
    fail_label_range(x);
  }
  const auto batch = x.size(0), h = x.size(1), w = x.size(2);
  at::Tensor out = at::empty({batch, (h / patch_size) * (w / patch_size)},
                             x.options().dtype(at::kShort));
  if (out.numel() == 0) return out;
  C10_CUDA_CHECK(cuda::region_presence(
      x.const_data_ptr<std::uint8_t>(), out.mutable_data_ptr<std::int16_t>(),
      batch, h, w, patch_size, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace
}  // namespace fsfm

TORCH_LIBRARY_IMPL(fsfm_fast, CUDA, m) {
  m.impl("region_presence", &fsfm::region_presence_cuda);
}
