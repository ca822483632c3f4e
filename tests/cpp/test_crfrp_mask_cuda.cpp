// The CRFR-P CUDA kernel on a real device against the CPU twin, bit for bit.
// Exits 77 (ctest SKIP_RETURN_CODE) when no device is present.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_runtime_api.h>

#include "cuda_test_util.h"
#include "crfrp_cases.h"
#include "fsfm_cpu.h"
#include "fsfm_kernels.h"

using fsfm_test::Case;
using fsfm_test::Config;
using fsfm_test::Masks;
namespace crfrp = fsfm::crfrp;

namespace {

template <class T>
T* device_copy(const std::vector<T>& host, size_t extra_bytes = 0) {
  void* d = nullptr;
  FSFM_CUDA_OK(cudaMalloc(&d, host.size() * sizeof(T) + extra_bytes + 1));
  if (!host.empty())
    FSFM_CUDA_OK(cudaMemcpy(static_cast<char*>(d) + extra_bytes, host.data(),
                            host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return reinterpret_cast<T*>(static_cast<char*>(d) + extra_bytes);
}

// The kernel with the map `offset` bytes into a device buffer (cudaMalloc is
// 256-byte aligned), so every load width runs.
Masks run_device(const Case& c, const Config& cfg, int offset) {
  const std::int64_t L = fsfm_test::num_patches(c);
  std::uint8_t* d_parsing = device_copy(c.parsing, offset);
  std::int64_t* d_region = cfg.region_index.empty() ? nullptr : device_copy(cfg.region_index);
  std::vector<std::uint8_t> sentinel(static_cast<size_t>(c.batch * L), 0xAB);
  std::uint8_t* d_img = device_copy(sentinel);
  std::uint8_t* d_fr = device_copy(sentinel);
  Masks host;
  crfrp::Params p = fsfm_test::make_params(c, cfg, d_parsing, host);
  p.img_mask = d_img;
  p.fr_mask = d_fr;
  p.region_index = d_region;
  FSFM_CUDA_OK(fsfm::cuda::crfrp_mask(p, nullptr));
  FSFM_CUDA_OK(cudaDeviceSynchronize());
  FSFM_CUDA_OK(cudaMemcpy(host.img.data(), d_img, host.img.size(), cudaMemcpyDeviceToHost));
  FSFM_CUDA_OK(cudaMemcpy(host.fr.data(), d_fr, host.fr.size(), cudaMemcpyDeviceToHost));
  FSFM_CUDA_OK(cudaFree(d_parsing - offset));
  if (d_region) FSFM_CUDA_OK(cudaFree(d_region));
  FSFM_CUDA_OK(cudaFree(d_img));
  FSFM_CUDA_OK(cudaFree(d_fr));
  return host;
}

Masks twin(const Case& c, const Config& cfg) {
  Masks m;
  fsfm::cpu::crfrp_mask(fsfm_test::make_params(c, cfg, c.parsing.data(), m), 0, c.batch);
  return m;
}

void compare(const Case& c, const Config& cfg, int offset) {
  const Masks want = twin(c, cfg), got = run_device(c, cfg, offset);
  const std::string what = fsfm_test::describe(c, cfg) + " offset " + std::to_string(offset);
  fsfm_test::same_bytes(got.img, want.img, what + " img");
  fsfm_test::same_bytes(got.fr, want.fr, what + " fr");
}

void rejects_invalid_launch() {
  const Case c = fsfm_test::blank("bad", 1, 32, 32, 16, 1);
  Masks host;
  crfrp::Params p = fsfm_test::make_params(c, Config{}, nullptr, host);
  p.patch = 15;
  const cudaError_t err = fsfm::cuda::crfrp_mask(p, nullptr);
  FSFM_CHECK(err == cudaErrorInvalidValue, "patch 15 on 32x32 must be rejected, got %s",
             cudaGetErrorString(err));
}

}  // namespace

int main() {
  if (!fsfm_test::cuda_device_present("crfrp_mask_cuda")) return fsfm_test::kSkip;
  for (const Case& c : fsfm_test::mask_cases())
    for (const Config& cfg : fsfm_test::sweep_configs(c)) compare(c, cfg, 0);
  const Case faces = fsfm_test::face_case("faces 224/16", 8, 224, 224, 16, 51);
  Config cfg;
  cfg.region = crfrp::kRegionImage;
  cfg.seed = 3;
  for (int offset : {1, 2, 4, 8}) compare(faces, cfg, offset);
  const Case many = fsfm_test::random_label_case("L = 2304", 2, 96, 96, 2, 52, 50);
  compare(many, cfg, 0);
  // Above the default 48 KiB of shared memory: the opt-in path.
  const Case huge = fsfm_test::random_label_case("L = 12544", 1, 224, 224, 2, 53, 50);
  compare(huge, cfg, 0);
  rejects_invalid_launch();
  return fsfm_test::finish("crfrp_mask_cuda");
}
