// What every CUDA test program needs: abort on a CUDA error, and skip (ctest SKIP_RETURN_CODE 77)
// on a machine without a device, so the programs build and pass in CI, which has no GPU.
#pragma once

#include <cstdio>
#include <cstdlib>

#include <cuda_runtime_api.h>

#define FSFM_CUDA_OK(expr)                                                  \
  do {                                                                      \
    const cudaError_t err_ = (expr);                                        \
    if (err_ != cudaSuccess) {                                              \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,    \
                   cudaGetErrorString(err_));                               \
      std::exit(1);                                                         \
    }                                                                       \
  } while (0)

namespace fsfm_test {

constexpr int kSkip = 77;

// False, after saying so, when no CUDA device can be used.
inline bool cuda_device_present(const char* test_name) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("%s: no CUDA device, skipped\n", test_name);
    return false;
  }
  return true;
}

}  // namespace fsfm_test
