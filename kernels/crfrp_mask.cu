// CRFR-P masks on the GPU (see fsfm_kernels.h for the contract).
//
// One block per image runs the block program of crfrp_mask.cuh: label
// presence by shared-memory atomicOr over the patch rows, group sizes by
// shared atomics, and every random choice as a rank among the candidates'
// (key, patch) composites held in shared memory. One launch for the batch.
#include <climits>

#include "crfrp_mask.cuh"
#include "fsfm_kernels.h"

namespace fsfm {
namespace cuda {
namespace {

namespace c = crfrp;

struct DeviceBlock {
  __device__ int threads() const { return static_cast<int>(blockDim.x); }
  template <class F>
  __device__ void for_each_thread(F f) const {
    f(static_cast<int>(threadIdx.x));
  }
  __device__ void sync() const { __syncthreads(); }
  __device__ void atomic_or(std::uint32_t* a, std::uint32_t v) const { atomicOr(a, v); }
  __device__ void atomic_add(int* a, int v) const { atomicAdd(a, v); }
};

template <int V>
__global__ void __launch_bounds__(c::kMaxThreads)
    crfrp_mask_kernel(c::Params p, c::Launch ln) {
  extern __shared__ __align__(16) unsigned char smem[];
  const c::Shared s = c::carve(smem, c::num_patches(p));
  DeviceBlock x;
  c::run_block<V>(x, p, ln, s, static_cast<std::int64_t>(blockIdx.x));
}

template <int V>
cudaError_t launch(const c::Params& p, const c::Launch& ln, cudaStream_t stream) {
  // Above the default 48 KiB a kernel must opt in to more shared memory.
  if (ln.smem_bytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        crfrp_mask_kernel<V>, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(ln.smem_bytes));
    if (err != cudaSuccess) return err;
  }
  crfrp_mask_kernel<V><<<static_cast<unsigned int>(p.batch), ln.threads, ln.smem_bytes,
                         stream>>>(p, ln);
  return cudaGetLastError();
}

}  // namespace

cudaError_t crfrp_mask(const crfrp::Params& p, cudaStream_t stream) {
  c::Launch ln;
  if (!c::valid(p) || p.batch > INT_MAX ||
      !c::make_launch(p, reinterpret_cast<std::uintptr_t>(p.parsing), 0, &ln)) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0 || c::num_patches(p) == 0) return cudaSuccess;
  switch (ln.g.vec) {
    case 16: return launch<16>(p, ln, stream);
    case 8: return launch<8>(p, ln, stream);
    case 4: return launch<4>(p, ln, stream);
    case 2: return launch<2>(p, ln, stream);
    default: return launch<1>(p, ln, stream);
  }
}

}  // namespace cuda
}  // namespace fsfm
