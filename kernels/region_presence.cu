// Per-patch label presence on the GPU (see fsfm_kernels.h for the contract).
//
// One block per (image, patch row, tile of patch columns). Threads read the
// strip with the widest aligned loads, reduce each load column over rows in
// registers, then atomicOr into a per-block shared accumulator with one word
// per patch; the accumulator is written out as int16 masks at the end.
#include <climits>

#include "fsfm_kernels.h"
#include "region_presence.cuh"

namespace fsfm {
namespace cuda {
namespace {

namespace p = presence;

template <int V>
__global__ void __launch_bounds__(p::kMaxThreads)
    region_presence_kernel(const std::uint8_t* __restrict__ parsing,
                           std::int16_t* __restrict__ out, p::Geometry g) {
  extern __shared__ std::uint32_t tile[];
  const p::Block blk = p::block_at(g, blockIdx.x);
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int nthreads = blockDim.x * blockDim.y;
  for (std::int64_t c = tid; c < blk.ncols; c += nthreads) tile[c] = 0;
  __syncthreads();
  p::presence_thread<V>(parsing, g, blk, threadIdx.x, threadIdx.y,
                        [&](std::int64_t col, std::uint32_t mask) {
                          atomicOr(&tile[col], mask);
                        });
  __syncthreads();
  p::store_tile(tile, out, g, blk, tid, nthreads);
}

template <int V>
void launch(const std::uint8_t* parsing, std::int16_t* out,
            const p::Geometry& g, unsigned int blocks, cudaStream_t stream) {
  const dim3 block(g.block_x, g.block_y);
  const size_t smem = static_cast<size_t>(g.tile_cols) * sizeof(std::uint32_t);
  region_presence_kernel<V><<<blocks, block, smem, stream>>>(parsing, out, g);
}

}  // namespace

cudaError_t region_presence(const std::uint8_t* parsing, std::int16_t* out,
                            std::int64_t batch, std::int64_t height,
                            std::int64_t width, std::int64_t patch,
                            cudaStream_t stream) {
  p::Geometry g;
  if (!p::make_geometry(batch, height, width, patch,
                        reinterpret_cast<std::uintptr_t>(parsing), &g)) {
    return cudaErrorInvalidValue;
  }
  const std::int64_t blocks = p::num_blocks(g);
  if (blocks == 0) return cudaSuccess;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  const auto n = static_cast<unsigned int>(blocks);
  switch (g.vec) {
    case 16: launch<16>(parsing, out, g, n, stream); break;
    case 8: launch<8>(parsing, out, g, n, stream); break;
    case 4: launch<4>(parsing, out, g, n, stream); break;
    case 2: launch<2>(parsing, out, g, n, stream); break;
    default: launch<1>(parsing, out, g, n, stream); break;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fsfm
