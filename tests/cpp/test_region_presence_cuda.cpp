// The CUDA kernel on a real device against the hand-computed masks and the
// CPU twin. Exits 77 (ctest SKIP_RETURN_CODE) when no device is present.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_runtime_api.h>

#include "cuda_test_util.h"
#include "fsfm_cpu.h"
#include "fsfm_kernels.h"
#include "presence_cases.h"

using fsfm_test::Case;

namespace {

// Runs the kernel with the map `offset` bytes into a device buffer (cudaMalloc
// is 256-byte aligned), so every load width is exercised.
std::vector<std::int16_t> run(const Case& c, int offset) {
  const size_t n = c.parsing.size();
  const size_t L = static_cast<size_t>(fsfm_test::num_patches(c));
  std::uint8_t* d_in = nullptr;
  std::int16_t* d_out = nullptr;
  FSFM_CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&d_in), n + 16));
  FSFM_CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&d_out), c.batch * L * sizeof(std::int16_t) + 2));
  FSFM_CUDA_OK(cudaMemcpy(d_in + offset, c.parsing.data(), n, cudaMemcpyHostToDevice));
  FSFM_CUDA_OK(cudaMemset(d_out, 0xFF, c.batch * L * sizeof(std::int16_t)));
  FSFM_CUDA_OK(fsfm::cuda::region_presence(d_in + offset, d_out, c.batch, c.height,
                                           c.width, c.patch, nullptr));
  FSFM_CUDA_OK(cudaDeviceSynchronize());
  std::vector<std::int16_t> out(c.batch * L);
  FSFM_CUDA_OK(cudaMemcpy(out.data(), d_out, out.size() * sizeof(std::int16_t),
                          cudaMemcpyDeviceToHost));
  FSFM_CUDA_OK(cudaFree(d_in));
  FSFM_CUDA_OK(cudaFree(d_out));
  return out;
}

std::vector<std::int16_t> cpu(const Case& c) {
  std::vector<std::int16_t> out(c.batch * fsfm_test::num_patches(c));
  fsfm::cpu::region_presence(c.parsing.data(), out.data(), c.height, c.width,
                             c.patch, 0, c.batch);
  return out;
}

}  // namespace

int main() {
  if (!fsfm_test::cuda_device_present("region_presence_cuda")) return fsfm_test::kSkip;
  for (const Case& c : fsfm_test::hand_cases())
    for (int offset : {0, 1, 2, 4, 8})
      fsfm_test::same(run(c, offset), c.expected, c.name + " offset " + std::to_string(offset));
  std::vector<Case> cases = fsfm_test::random_cases();
  Case wide = fsfm_test::blank("multi-tile", 2, 2, 9000, 1, 1);
  for (size_t i = 0; i < wide.parsing.size(); i += 7) wide.parsing[i] = static_cast<std::uint8_t>(i % 11);
  cases.push_back(wide);
  for (const Case& c : cases)
    for (int offset : {0, 1, 8})
      fsfm_test::same(run(c, offset), cpu(c), c.name + " offset " + std::to_string(offset));

  std::uint8_t* d_in = nullptr;
  FSFM_CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&d_in), 64));
  const cudaError_t bad = fsfm::cuda::region_presence(d_in, nullptr, 1, 6, 8, 4, nullptr);
  FSFM_CHECK(bad == cudaErrorInvalidValue, "patch 4 on height 6 must be rejected, got %s",
             cudaGetErrorString(bad));
  FSFM_CUDA_OK(cudaFree(d_in));
  return fsfm_test::finish("region_presence_cuda");
}
