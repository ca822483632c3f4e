// CPU twins of the CUDA kernels, free of PyTorch so ctest can link them alone.
//
// Each function works on a batch range [b0, b1) of contiguous buffers, which
// lets the extension split the batch with at::parallel_for.
#pragma once

#include <cstdint>

namespace fsfm {
namespace crfrp {
struct Params;  // kernels/crfrp_mask.cuh
}  // namespace crfrp

namespace cpu {

// Per-patch label presence: parsing is uint8 [B, height, width], out is
// int16 [B, (height/patch)*(width/patch)]; for b in [b0, b1) each patch
// (row-major) gets a mask with bit k set iff label k occurs in it. patch must
// divide height and width.
// Returns the OR of the label bits of every pixel read, with labels >= 31
// folded into bit 31, so a caller detects labels above 10 from (ret >> 11)
// without a second pass over the data.
std::uint32_t region_presence(const std::uint8_t* parsing, std::int16_t* out,
                              std::int64_t height, std::int64_t width,
                              std::int64_t patch, std::int64_t b0,
                              std::int64_t b1);

// CRFR-P masks for the images [b0, b1) of p (host buffers; requires
// crfrp::valid(p)): the same stages and random stream as the CUDA kernel,
// hence the same masks bit for bit, computed one image at a time with
// nth_element instead of the kernel's block-wide ranks. Returns the label
// bits seen, as region_presence does: labels above 10 leave p's outputs
// meaningless (but never read or write out of bounds) and must be reported
// by the caller.
std::uint32_t crfrp_mask(const crfrp::Params& p, std::int64_t b0,
                         std::int64_t b1);

}  // namespace cpu
}  // namespace fsfm
