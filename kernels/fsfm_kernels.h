// Host-callable entry points of the CUDA kernels in kernels/*.cu.
//
// Torch-free on purpose: the launchers take raw device pointers and a stream,
// so nvcc compiles them without PyTorch headers and the C++ tests in
// tests/cpp link them directly. Arguments are validated by the callers
// (csrc/ for the extension, the tests otherwise); a launcher only rejects
// what would make the launch itself invalid, by returning an error code.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fsfm {
namespace cuda {

// Per-patch label presence: parsing is a contiguous uint8 [B, H, W] device
// buffer with labels 0..10; out is an int16 [B, (H/patch)*(W/patch)] device
// buffer that receives, for every patch in row-major order, a mask with bit k
// set iff label k occurs in the patch. patch must divide H and W.
// Returns cudaErrorInvalidValue for a bad geometry, else the launch status.
cudaError_t region_presence(const std::uint8_t* parsing, std::int16_t* out,
                            std::int64_t batch, std::int64_t height,
                            std::int64_t width, std::int64_t patch,
                            cudaStream_t stream);

}  // namespace cuda
}  // namespace fsfm
