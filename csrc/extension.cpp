// The fsfm_fast._C module: build information.
//
// Each op declares its schema (TORCH_LIBRARY_FRAGMENT) and registers its
// kernels (TORCH_LIBRARY_IMPL) in its own files under csrc/; importing this
// module loads the library, which is what makes them visible as
// torch.ops.fsfm_fast.*. This file stays free of torch headers to compile fast.
#include <pybind11/pybind11.h>

#ifndef FSFM_VERSION
#define FSFM_VERSION 0.0.0
#endif
#define FSFM_STR2(x) #x
#define FSFM_STR(x) FSFM_STR2(x)

namespace {

bool cuda_built() {
#ifdef FSFM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fsfm_fast compiled ops (registered under torch.ops.fsfm_fast)";
  m.attr("version") = FSFM_STR(FSFM_VERSION);
  m.def("cuda_built", &cuda_built,
        "True when the CUDA kernels were compiled into this build.");
#ifdef FSFM_CUDA_VERSION
  m.attr("cuda_version") = FSFM_STR(FSFM_CUDA_VERSION);
#else
  m.attr("cuda_version") = pybind11::none();
#endif
}
