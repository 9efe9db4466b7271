// Device code shared by the CUDA kernels: dtype conversion, aligned vector loads, deterministic block
// reductions, the single-block finalize kernel, and the pixel-loop skeleton every op plugs into.
// Only CUDA headers are included here (no torch), so each .cu compiles in seconds on any machine.
//
// The skeleton. "Pixel" p = n * HW + hw indexes an [N, H, W] map; channel c of pixel p sits at
// channel0_offset(p) + c * HW of an NCHW tensor. Each thread takes a group of VEC consecutive pixels
// (VEC > 1 only when HW % VEC == 0, so a group never crosses an image, and every pointer is 16-byte
// aligned, so the group's values of one channel are one or two 16-byte loads) and loops over the C
// channels; consecutive threads take consecutive groups, so every load is coalesced along HW.
// An op is a functor `Op` with `static constexpr int kVec`, `using acc_t`, and
//   reductions: `void operator()(int64_t p0, acc_t& loss, acc_t& count) const` (adds its group's terms),
//   maps:       `void operator()(int64_t p0) const`.
// Reductions are two-stage and deterministic: pixel_reduce_kernel leaves one (loss, count) partial per
// block in the workspace (warp shuffles, then shared memory, in a fixed order), finalize_kernel (one
// block) adds the partials in a fixed order and writes loss and denom. The grid depends only on the
// number of pixel groups, never on the device. No float atomics, no host synchronisation.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_kernels.h"

// Per-pixel device code is also host-callable. The whole file, kernels included, also compiles as host
// C++ against the launch emulator of tests/cuda_host (XTC_HOST_EMULATION), which runs the kernels on the
// CPU thread by thread (docs/ops.md, "The device code executed on the host").
#define XTC_HD __host__ __device__ __forceinline__
// Out of line on the device and on the host (nvcc's __noinline__ is a keyword; g++ spells it as an attribute).
#ifdef XTC_HOST_EMULATION
#define XTC_NOINLINE __host__ __device__ __attribute__((noinline))
#else
#define XTC_NOINLINE __host__ __device__ __noinline__
#endif

// The emulator checks the alignment of every vector access; on the device it is a precondition.
#ifndef XTC_CHECK_ALIGNED
#define XTC_CHECK_ALIGNED(p, bytes)
#endif

namespace xtc::cuda {

constexpr int kThreads = 256;                // threads per block of the pixel kernels
constexpr int kFinalizeThreads = 512;        // threads of the single finalize block
constexpr int64_t kMaxPartials = 4096;       // grid cap of the reduction kernels (grid-stride beyond)
constexpr int64_t kMaxMapBlocks = 1 << 20;   // grid cap of the map kernels (grid-stride beyond)
constexpr int kVecBytes = 16;                // widest load per thread
constexpr int kMaxVecPixels = 4;             // pixels per thread group of the pixel ops (register budget)

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid of a reduction over `groups` work items: one item per thread up to kMaxPartials blocks.
// Monotonic in `groups`, so reduction_blocks(num_pixels) (VEC = 1) bounds every vectorised grid.
__host__ __device__ constexpr int64_t reduction_grid(int64_t groups) {
  const int64_t b = ceil_div(groups, kThreads);
  return b < 1 ? 1 : (b > kMaxPartials ? kMaxPartials : b);
}

__host__ __device__ constexpr int64_t map_grid(int64_t groups) {
  const int64_t b = ceil_div(groups, kThreads);
  return b < 1 ? 1 : (b > kMaxMapBlocks ? kMaxMapBlocks : b);
}

// ---------------------------------------------------------------------------------------------
// Element types: accumulation type and conversions (fp32 math for the half types).

template <typename T>
struct Scalar;

template <>
struct Scalar<float> {
  using acc = float;
  __host__ __device__ static float to_acc(float x) { return x; }
  __host__ __device__ static float from_acc(float x) { return x; }
};

template <>
struct Scalar<double> {
  using acc = double;
  __host__ __device__ static double to_acc(double x) { return x; }
  __host__ __device__ static double from_acc(double x) { return x; }
};

template <>
struct Scalar<__half> {
  using acc = float;
  __host__ __device__ static float to_acc(__half x) { return __half2float(x); }
  __host__ __device__ static __half from_acc(float x) { return __float2half_rn(x); }
};

template <>
struct Scalar<__nv_bfloat16> {
  using acc = float;
  __host__ __device__ static float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
  __host__ __device__ static __nv_bfloat16 from_acc(float x) { return __float2bfloat16_rn(x); }
};

template <typename T>
using acc_type = typename Scalar<T>::acc;

// IEEE-accurate math (no --use_fast_math): expf/logf are a few instructions on the SFU plus scaling.
XTC_HD float acc_exp(float x) { return expf(x); }
XTC_HD double acc_exp(double x) { return exp(x); }
XTC_HD float acc_log(float x) { return logf(x); }
XTC_HD double acc_log(double x) { return log(x); }
XTC_HD float acc_sqrt(float x) { return sqrtf(x); }
XTC_HD double acc_sqrt(double x) { return sqrt(x); }
XTC_HD float acc_abs(float x) { return fabsf(x); }
XTC_HD double acc_abs(double x) { return fabs(x); }

// ---------------------------------------------------------------------------------------------
// Vector loads and stores of VEC consecutive elements. The caller guarantees that `p` is aligned
// to min(VEC * sizeof(T), 16) bytes (pointer 16-byte aligned, offset a multiple of VEC elements).

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int VEC>
__host__ __device__ constexpr int pack_chunk() {
  static_assert(VEC >= 1 && (VEC & (VEC - 1)) == 0, "VEC must be a power of two");
  static_assert(sizeof(T) <= kVecBytes, "element wider than a vector access");
  return VEC * static_cast<int>(sizeof(T)) > kVecBytes ? kVecBytes / static_cast<int>(sizeof(T)) : VEC;
}

template <int VEC, typename T>
XTC_HD void load_pack(const T* __restrict__ p, T (&out)[VEC]) {
  constexpr int kChunk = pack_chunk<T, VEC>();
#pragma unroll
  for (int j = 0; j < VEC; j += kChunk) {
    XTC_CHECK_ALIGNED(p + j, sizeof(Pack<T, kChunk>));
    const Pack<T, kChunk> x = *reinterpret_cast<const Pack<T, kChunk>*>(p + j);
#pragma unroll
    for (int i = 0; i < kChunk; ++i) out[j + i] = x.v[i];
  }
}

template <int VEC, typename T>
XTC_HD void store_pack(T* __restrict__ p, const T (&in)[VEC]) {
  constexpr int kChunk = pack_chunk<T, VEC>();
#pragma unroll
  for (int j = 0; j < VEC; j += kChunk) {
    Pack<T, kChunk> x;
#pragma unroll
    for (int i = 0; i < kChunk; ++i) x.v[i] = in[j + i];
    XTC_CHECK_ALIGNED(p + j, sizeof(Pack<T, kChunk>));
    *reinterpret_cast<Pack<T, kChunk>*>(p + j) = x;
  }
}

// Loads VEC values of scalar_t and converts them to the accumulation type.
template <int VEC, typename scalar_t>
XTC_HD void load_acc(const scalar_t* __restrict__ p, acc_type<scalar_t> (&out)[VEC]) {
  scalar_t raw[VEC];
  load_pack<VEC>(p, raw);
#pragma unroll
  for (int i = 0; i < VEC; ++i) out[i] = Scalar<scalar_t>::to_acc(raw[i]);
}

// Converts VEC accumulated values to scalar_t and stores them.
template <int VEC, typename scalar_t>
XTC_HD void store_acc(scalar_t* __restrict__ p, const acc_type<scalar_t> (&in)[VEC]) {
  scalar_t raw[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) raw[i] = Scalar<scalar_t>::from_acc(in[i]);
  store_pack<VEC>(p, raw);
}

// ---------------------------------------------------------------------------------------------
// Pixel helpers.

// Offset of channel 0 of pixel p = n * HW + hw in an [N, C, HW] tensor: n * C * HW + hw.
XTC_HD int64_t channel0_offset(int64_t p, int64_t C, int64_t HW) {
  const int64_t n = p / HW;
  return p + n * (C - 1) * HW;
}

// m[i] = max over the C channels of pixel i of the group (x points at channel 0, stride HW).
// Same comparison as the CPU kernels (`v > m ? v : m`).
template <int VEC, typename scalar_t>
XTC_HD void channel_max(const scalar_t* __restrict__ x, int64_t C, int64_t HW,
                                            acc_type<scalar_t> (&m)[VEC]) {
  load_acc<VEC>(x, m);
#pragma unroll 4
  for (int64_t c = 1; c < C; ++c) {
    acc_type<scalar_t> v[VEC];
    load_acc<VEC>(x + c * HW, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) m[i] = v[i] > m[i] ? v[i] : m[i];
  }
}

// valid[i] = mask == nullptr || mask[p0 + i].
template <int VEC>
XTC_HD void load_mask(const bool* __restrict__ mask, int64_t p0, bool (&valid)[VEC]) {
  if (mask) {
    load_pack<VEC>(mask + p0, valid);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) valid[i] = true;
  }
}

// Upstream-gradient scale of the backward kernels, read on the device: grad_loss[0] / denom[0] for
// mean (0 when denom is 0), grad_loss[0] for sum, grad_loss[index] for none.
template <typename acc_t>
struct GradScale {
  const acc_t* grad_loss;
  const acc_t* denom;
  Reduction reduction;

  // s[i] = scale of loss element i0 + i (loss elements are pixels, or NCHW elements for masked_l1_loss).
  template <int VEC>
  XTC_HD void load(int64_t i0, acc_t (&s)[VEC]) const {
    if (reduction == Reduction::None) {
      load_pack<VEC>(grad_loss + i0, s);
    } else {
      const acc_t d = reduction == Reduction::Mean ? denom[0] : acc_t(1);
      const acc_t g = d != acc_t(0) ? grad_loss[0] / d : acc_t(0);
#pragma unroll
      for (int i = 0; i < VEC; ++i) s[i] = g;
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Deterministic block reduction.

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sums a and b over the block (blockDim.x == BLOCK); the sums are valid in thread 0 only.
// Contains __syncthreads: every thread of the block must call it, once per kernel.
template <int BLOCK, typename T>
__device__ __forceinline__ void block_sum2(T& a, T& b) {
  static_assert(BLOCK % 32 == 0 && BLOCK >= 32 && BLOCK <= 1024, "BLOCK must be a multiple of 32 up to 1024");
  constexpr int kWarps = BLOCK / 32;
  __shared__ T shared_a[kWarps];
  __shared__ T shared_b[kWarps];
  a = warp_sum(a);
  b = warp_sum(b);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    shared_a[warp] = a;
    shared_b[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kWarps ? shared_a[lane] : T(0);
    b = lane < kWarps ? shared_b[lane] : T(0);
    a = warp_sum(a);
    b = warp_sum(b);
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels of the skeleton.

// partials[blockIdx.x] = sum of the loss terms of the block's groups, partials[gridDim.x + blockIdx.x]
// = sum of their counts (denominator terms).
template <typename Op>
__global__ void __launch_bounds__(kThreads)
    pixel_reduce_kernel(const Op op, int64_t num_groups, typename Op::acc_t* __restrict__ partials) {
  using acc_t = typename Op::acc_t;
  acc_t loss = 0, count = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; g < num_groups; g += stride) {
    op(g * Op::kVec, loss, count);
  }
  block_sum2<kThreads>(loss, count);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = loss;
    partials[gridDim.x + blockIdx.x] = count;
  }
}

// Adds the partials in a fixed order (in double) and writes denom = count and, for mean / sum, the
// loss (a mean over a zero denominator is 0).
template <typename acc_t>
__global__ void __launch_bounds__(kFinalizeThreads)
    finalize_kernel(const acc_t* __restrict__ partials, int64_t num_partials, Reduction reduction,
                    acc_t* __restrict__ loss, acc_t* __restrict__ denom) {
  double sum = 0, count = 0;
  for (int64_t i = threadIdx.x; i < num_partials; i += kFinalizeThreads) {
    sum += static_cast<double>(partials[i]);
    count += static_cast<double>(partials[num_partials + i]);
  }
  block_sum2<kFinalizeThreads>(sum, count);
  if (threadIdx.x == 0) {
    *denom = static_cast<acc_t>(count);
    if (reduction == Reduction::Mean) *loss = static_cast<acc_t>(count != 0 ? sum / count : 0.0);
    if (reduction == Reduction::Sum) *loss = static_cast<acc_t>(sum);
  }
}

template <typename Op>
__global__ void __launch_bounds__(kThreads) pixel_map_kernel(const Op op, int64_t num_groups) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; g < num_groups; g += stride) {
    op(g * Op::kVec);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: launches and dispatch.

// kernel<<<grid, block, 0, stream>>>(args...) and its launch error. Under the host emulator
// (tests/cuda_host/emulator.h) the same kernel runs on the CPU.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), int64_t grid, int block, cudaStream_t stream,
                          const Args&... args) {
#ifdef XTC_HOST_EMULATION
  return xtc_emu::launch(kernel, grid, block, args...);
#else
  kernel<<<static_cast<unsigned>(grid), block, 0, stream>>>(args...);
  return cudaGetLastError();
#endif
}

// Reduction over num_pixels pixels (a multiple of Op::kVec): the pixel kernel, then the finalize.
// loss is written for mean / sum only (reduction none: the op writes its per-pixel loss itself).
template <typename Op>
cudaError_t launch_pixel_reduction(const Op& op, int64_t num_pixels, Reduction reduction, void* loss, void* denom,
                                   void* workspace, cudaStream_t stream) {
  using acc_t = typename Op::acc_t;
  const int64_t groups = num_pixels / Op::kVec;
  const int64_t grid = reduction_grid(groups);
  acc_t* partials = static_cast<acc_t*>(workspace);
  const cudaError_t err = launch_kernel(pixel_reduce_kernel<Op>, grid, kThreads, stream, op, groups, partials);
  if (err != cudaSuccess) return err;
  return launch_kernel(finalize_kernel<acc_t>, 1, kFinalizeThreads, stream, partials, grid, reduction,
                       static_cast<acc_t*>(loss), static_cast<acc_t*>(denom));
}

// Map over num_items items in groups of Op::kVec (the last group may be partial: the op checks).
template <typename Op>
cudaError_t launch_pixel_map(const Op& op, int64_t num_items, cudaStream_t stream) {
  const int64_t groups = ceil_div(num_items, Op::kVec);
  if (groups <= 0) return cudaSuccess;
  return launch_kernel(pixel_map_kernel<Op>, map_grid(groups), kThreads, stream, op, groups);
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<scalar_t>{}) for the input dtype; returns what f returns.
template <typename F>
cudaError_t dispatch_dtype(DType dtype, const F& f) {
  switch (dtype) {
    case DType::Float32:
      return f(TypeTag<float>{});
    case DType::Float16:
      return f(TypeTag<__half>{});
    case DType::BFloat16:
      return f(TypeTag<__nv_bfloat16>{});
    case DType::Float64:
      return f(TypeTag<double>{});
  }
  return cudaErrorInvalidValue;
}

template <int V>
struct VecTag {
  static constexpr int value = V;
};

// Elements per thread of the vector path of the elementwise ops: one 16-byte access.
template <typename scalar_t>
constexpr int vec_width() {
  return kVecBytes / static_cast<int>(sizeof(scalar_t));
}

// Pixels per thread group of the vector path of the pixel ops: up to 16 bytes of scalar_t per channel
// (4 fp32, 4 fp16/bf16 = 8 bytes, 2 fp64). More pixels per thread (8 half values) keeps about 130
// registers per thread live in the cross-entropy kernels: one 256-thread block per SM.
template <typename scalar_t>
constexpr int pixel_vec_width() {
  return vec_width<scalar_t>() < kMaxVecPixels ? vec_width<scalar_t>() : kMaxVecPixels;
}

// Calls f(VecTag<V>{}) when `vectorise`, else f(VecTag<1>{}).
template <int V, typename F>
cudaError_t dispatch_vec(bool vectorise, const F& f) {
  if (vectorise) return f(VecTag<V>{});
  return f(VecTag<1>{});
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % kVecBytes == 0; }

// True when every pointer is 16-byte aligned (nullptr counts as aligned).
template <typename... P>
bool all_aligned16(const P*... ptrs) {
  return (aligned16(ptrs) && ...);
}

// The vector path of a pixel op: groups of V pixels never cross an image and all loads are aligned.
template <typename... P>
bool can_vectorise(int64_t HW, int V, const P*... ptrs) {
  return V > 1 && HW % V == 0 && all_aligned16(ptrs...);
}

}  // namespace xtc::cuda
