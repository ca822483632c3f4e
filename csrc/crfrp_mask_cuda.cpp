// CUDA kernel registration of fsfm_fast::crfrp_mask.
#include <tuple>
#include <vector>

#include <ATen/ops/cat.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../kernels/fsfm_kernels.h"
#include "crfrp_mask.h"
#include "ops.h"

namespace fsfm {
namespace {

// One reduction per checked value and one host sync for all of them, so a bad
// label or region index fails here, before the launch. Without check_labels
// and without a region index nothing is read back: no sync at all.
void check_values_cuda(const CrfrpCall& call, bool check_labels) {
  const bool labels = check_labels && call.parsing.numel() > 0;
  const bool regions = call.region_index.defined() && call.region_index.numel() > 0;
  if (!labels && !regions) return;
  std::vector<at::Tensor> parts;
  if (labels) parts.push_back(call.parsing.max().to(at::kLong).reshape({1}));
  if (regions) {
    parts.push_back(call.region_index.min().reshape({1}));
    parts.push_back(call.region_index.max().reshape({1}));
  }
  const at::Tensor values = at::cat(parts).cpu();
  const std::int64_t* v = values.const_data_ptr<std::int64_t>();
  if (labels && v[0] > kMaxLabel) fail_crfrp_label(v[0]);
  if (regions) check_crfrp_region_range(v[labels ? 1 : 0], v[labels ? 2 : 1]);
}

void check_shared_memory(const CrfrpCall& call) {
  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                        call.parsing.get_device()));
  const std::size_t need = crfrp::smem_bytes(crfrp::num_patches(call.params));
  TORCH_CHECK_VALUE(need <= static_cast<std::size_t>(limit), "crfrp_mask: ",
                    crfrp::num_patches(call.params), " patches per image need ", need,
                    " bytes of shared memory on the GPU, which grants ", limit,
                    "; use a larger patch_size or backend='cpu'");
}

std::tuple<at::Tensor, at::Tensor> crfrp_mask_cuda(
    const at::Tensor& parsing, std::int64_t patch_size, double mask_ratio,
    std::string_view strategy, std::string_view region,
    const std::optional<at::Tensor>& region_index, std::int64_t seed, std::int64_t offset,
    bool check_labels) {
  const c10::cuda::CUDAGuard guard(parsing.device());
  CrfrpCall call = prepare_crfrp(parsing, patch_size, mask_ratio, strategy, region,
                                 region_index, seed, offset);
  TORCH_CHECK_VALUE(call.params.batch <= INT32_MAX,
                    "crfrp_mask: at most 2^31 - 1 images per call on the GPU, got ",
                    call.params.batch);
  if (call.img_mask.numel() == 0) return {call.img_mask, call.fr_mask};
  check_values_cuda(call, check_labels);
  check_shared_memory(call);
  C10_CUDA_CHECK(cuda::crfrp_mask(call.params, c10::cuda::getCurrentCUDAStream().stream()));
  return {call.img_mask, call.fr_mask};
}

}  // namespace
}  // namespace fsfm

TORCH_LIBRARY_IMPL(fsfm_fast, CUDA, m) {
  m.impl("crfrp_mask", &fsfm::crfrp_mask_cuda);
}
