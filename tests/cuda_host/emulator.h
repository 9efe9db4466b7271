// Launch emulator: runs the CUDA kernels of csrc/*.cu, compiled as host C++ (g++ -x c++ with this header
// force-included), on the CPU, thread by thread, with the semantics the kernels rely on:
// - a launch runs its blocks one after the other; a block's threads are fibers (own stacks), each run until
//   it reaches a barrier, so the block advances phase by phase between barriers;
// - __syncthreads() is a block barrier: every thread of the block must reach it (a thread that exited or
//   waits at another barrier is reported as a divergent barrier, a launch error);
// - __shfl_down_sync(0xffffffff, v, delta) is a warp barrier over the 32 lanes of a lane array (lane + delta
//   beyond the warp returns the lane's own value, as on the device); a partial mask is an error;
// - __shared__ variables are one per kernel, shared by the block's threads (blocks never overlap);
// - threadIdx/blockIdx/blockDim/gridDim are set for the running fiber;
// - every vector access of load_pack/store_pack is checked for its alignment (XTC_CHECK_ALIGNED).
// What it does not model: concurrency between blocks (they never communicate in these kernels), device
// memory spaces, and the device's float rounding (FMA contraction, expf/logf ulps): results are compared
// with tolerances. The documentation: docs/ops.md, "The device code executed on the host".
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>  // expf, logf, rintf, ldexpf, ...: the device math library's host counterparts

#include <cstdint>
#include <cstring>
#include <functional>

#define XTC_HOST_EMULATION 1

// Host compilation defines __shared__ as nothing: make it one object per kernel, as in a block.
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)

inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

namespace xtc_emu {

// Inside a kernel: records `message` as the launch's error and abandons the launch (back to the scheduler).
[[noreturn]] void fail(const char* message);
// Outside a kernel: records `message` as the last error.
void set_error(const char* message);

// Blocks the calling fiber at a block barrier (__syncthreads) or a warp barrier (a shuffle).
void block_barrier();
void warp_barrier();

// Exchange slots of the calling thread's warp for its `seq`-th shuffle (two alternating buffers, so one
// barrier per shuffle suffices).
uint64_t* warp_slots(unsigned seq);
unsigned& shuffle_count();

// Runs kernel(args...) for every thread of a grid x block launch; false (and last_error()) on an emulator
// error. Only the calling OS thread is used.
bool run(unsigned grid, unsigned block, const std::function<void()>& body);

inline void check_aligned(const void* p, int bytes) {
  if (reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) != 0) fail("misaligned vector access");
}

}  // namespace xtc_emu

inline void __syncthreads() { xtc_emu::block_barrier(); }

template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a value wider than 8 bytes");
  if (mask != 0xffffffffu || width != 32) xtc_emu::fail("__shfl_down_sync with a partial mask or width");
  const unsigned lane = threadIdx.x % 32;
  unsigned& seq = xtc_emu::shuffle_count();
  uint64_t* slots = xtc_emu::warp_slots(seq++);
  std::memcpy(&slots[lane], &v, sizeof(T));
  xtc_emu::warp_barrier();
  T out = v;
  if (lane + delta < 32) std::memcpy(&out, &slots[lane + delta], sizeof(T));
  return out;
}

#define XTC_CHECK_ALIGNED(p, bytes) xtc_emu::check_aligned((p), (bytes))

namespace xtc_emu {

// The kernel<<<grid, block, 0, stream>>>(args...) of cuda_common.cuh's launch_kernel under emulation.
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), int64_t grid, int block, const Args&... args) {
  if (grid < 1 || grid > 0x7fffffffLL || block < 32 || block > 1024 || block % 32 != 0) {
    set_error("launch configuration: grid outside [1, 2^31 - 1] or block not a multiple of 32 in [32, 1024]");
    return cudaErrorInvalidConfiguration;
  }
  const bool ok = run(static_cast<unsigned>(grid), static_cast<unsigned>(block), [&] { kernel(args...); });
  return ok ? cudaSuccess : cudaErrorLaunchFailure;
}

}  // namespace xtc_emu
