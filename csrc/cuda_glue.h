// The torch glue of the CUDA kernels, shared by the ops: each op's CUDA entry points (namespace xtc::gpu in
// csrc/<op>.cpp, compiled only in a CUDA build, XTC_WITH_CUDA = 1) validate their arguments with the op's
// check function, then "the first input is a CUDA tensor", take a device guard and the current stream,
// make the inputs contiguous, allocate outputs and workspace, and call the launchers declared in
// cuda_kernels.h. Sizes passed to a launcher come from the validated layout. No host synchronisation:
// grad_loss and denom stay on the device, and an out-of-range class index is reported by an asynchronous
// device assert.
#pragma once

#if !XTC_WITH_CUDA
#error "cuda_glue.h is for CUDA builds only (XTC_WITH_CUDA = 1)"
#endif

#include "common.h"
#include "cuda_kernels.h"

#include <ATen/ops/_assert_async.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace xtc::gpu {

inline cuda::DType cuda_dtype(const Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return cuda::DType::Float32;
    case at::kHalf:
      return cuda::DType::Float16;
    case at::kBFloat16:
      return cuda::DType::BFloat16;
    case at::kDouble:
      return cuda::DType::Float64;
    default:
      TORCH_CHECK_TYPE(false, op, ": expected float16, bfloat16, float32 or float64, got ", t.scalar_type());
  }
}

inline cuda::Reduction cuda_reduction(Reduction red) {
  switch (red) {
    case Reduction::None:
      return cuda::Reduction::None;
    case Reduction::Mean:
      return cuda::Reduction::Mean;
    case Reduction::Sum:
      return cuda::Reduction::Sum;
  }
  TORCH_CHECK(false, "unreachable reduction");
}

// The prologue of every CUDA entry point, after the op's check (checks.h: every tensor on the first
// input's device): the first input is a CUDA tensor, a device guard on it, and the current stream.
struct CudaCall {
  c10::cuda::CUDAGuard guard;
  cudaStream_t stream;

  CudaCall(const Tensor& input, const char* op, const char* name) : guard(cuda_device(input, op, name)) {
    stream = c10::cuda::getCurrentCUDAStream();
  }

  static at::Device cuda_device(const Tensor& t, const char* op, const char* name) {
    TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor here, got one on ", t.device());
    return t.device();
  }
};

// How the backward kernels read the upstream gradient (GradScale in cuda_common.cuh): per pixel
// (reduction none), divided by the saved denominator (mean), or one value (sum, and a value broadcast
// to every pixel for reduction none, e.g. the gradient of out.sum(), read without copying it out).
inline cuda::Reduction grad_mode(const GradLoss& grad, Reduction red) {
  if (grad.per_pixel) return cuda::Reduction::None;
  return red == Reduction::Mean ? cuda::Reduction::Mean : cuda::Reduction::Sum;
}

// The saved denominator in the loss dtype (validated by check_loss_backward).
inline Tensor prepare_denom(const Tensor& denom, const Tensor& input) { return denom.to(loss_dtype(input)).contiguous(); }

// Saved per-pixel log-normaliser in the loss dtype, contiguous (validated by check_loss_backward).
inline Tensor prepare_log_norm(const Tensor& log_norm, const Tensor& input) {
  return log_norm.to(loss_dtype(input)).contiguous();
}

inline const bool* mask_ptr(const OptTensor& mask) { return mask ? mask->const_data_ptr<bool>() : nullptr; }

// Per-block partials of the two-stage reductions over num_pixels pixels.
inline Tensor reduction_workspace(int64_t num_pixels, const at::TensorOptions& acc_options) {
  return at::empty({2 * cuda::reduction_blocks(num_pixels)}, acc_options);
}

}  // namespace xtc::gpu
