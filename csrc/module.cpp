// The Python extension module xtc_ext._C. Importing it runs the static TORCH_LIBRARY registrations
// of the ops; build_info() reports what the binary was built against.
#include <pybind11/pybind11.h>

#ifndef XTC_TORCH_VERSION
#error "XTC_TORCH_VERSION must be defined by the build"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "xtc_ext compiled ops (registered as torch.ops.xtc_ext.*)";
  m.def(
      "build_info",
      [] {
        pybind11::dict info;
        info["torch_version"] = XTC_TORCH_VERSION;
        info["with_cuda"] = static_cast<bool>(XTC_WITH_CUDA);
        info["cuda_arch_list"] = XTC_CUDA_ARCH_LIST;
        info["compiler"] = __VERSION__;
        info["source_hash"] = XTC_SOURCE_HASH;
        info["cxx11_abi"] = static_cast<bool>(_GLIBCXX_USE_CXX11_ABI);
        return info;
      },
      "Dict describing how this extension was built: torch_version, with_cuda, cuda_arch_list, compiler, cxx11_abi, source_hash.");
}
