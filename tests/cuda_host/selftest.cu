// Kernels that test the launch emulator itself (tests/ops/test_device_on_host.py::test_emulator_*): the block
// reduction of cuda_common.cuh in the device's order, shuffles at the warp's edge, and the errors the emulator
// must report (a barrier not every thread reaches, a misaligned vector access). Host build only.
#include "cuda_common.cuh"

namespace {

using namespace xtc::cuda;

// out[2 b] = sum of the block's 256 inputs (block_sum2's order), out[2 b + 1] = 256.
__global__ void block_sum_kernel(const float* in, float* out) {
  float a = in[blockIdx.x * blockDim.x + threadIdx.x], b = 1.0f;
  block_sum2<kThreads>(a, b);
  if (threadIdx.x == 0) {
    out[2 * blockIdx.x] = a;
    out[2 * blockIdx.x + 1] = b;
  }
}

__global__ void shuffle_kernel(int delta, int* out) {
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<int>(threadIdx.x), static_cast<unsigned>(delta));
}

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void vector_load_kernel(const float* p, float* out) {
  float v[4];
  load_pack<4>(p, v);
  out[threadIdx.x] = v[0];
}

}  // namespace

extern "C" {
int xtc_selftest_block_sum(const float* in, float* out, int64_t blocks) {
  return launch_kernel(block_sum_kernel, blocks, kThreads, nullptr, in, out);
}
int xtc_selftest_shuffle(int delta, int* out) { return launch_kernel(shuffle_kernel, 1, 64, nullptr, delta, out); }
int xtc_selftest_divergent_barrier(int* out) { return launch_kernel(divergent_barrier_kernel, 1, 64, nullptr, out); }
int xtc_selftest_vector_load(const float* p, float* out) {
  return launch_kernel(vector_load_kernel, 1, 32, nullptr, p, out);
}
}
