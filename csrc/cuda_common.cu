// Host-side definitions shared by the CUDA launchers (declared in cuda_kernels.h).
#include "cuda_common.cuh"

namespace xtc::cuda {

// Upper bound of the grid of every reduction over num_items pixels: the grid of the scalar path
// (one pixel per thread); the vector paths use fewer blocks.
int64_t reduction_blocks(int64_t num_items) { return reduction_grid(num_items); }

}  // namespace xtc::cuda
