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
namespace crfrp {
struct Params;  // kernels/crfrp_mask.cuh
}  // namespace crfrp

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

// CRFR-P masks for a whole batch in one launch (one block per image):
// p.parsing, p.img_mask, p.fr_mask and p.region_index are device buffers,
// the labels are 0..10 and p.region_index holds 0..5 (the caller checks
// both). Writes uint8 0/1, bit-identical to fsfm::cpu::crfrp_mask for the
// same (seed, offset). Returns cudaErrorInvalidValue when !crfrp::valid(p)
// or batch > INT_MAX; a shared-memory request the device cannot grant
// (crfrp::smem_bytes(L) above its opt-in limit) fails with that error.
cudaError_t crfrp_mask(const crfrp::Params& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fsfm
