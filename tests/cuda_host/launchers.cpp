// C entry points of the CUDA launchers (csrc/cuda_kernels.h) compiled as host code against the launch
// emulator, for ctypes (tests/ops/device_on_host.py). Enums pass as int; the stream is unused (nullptr).
#include "cuda_kernels.h"

using xtc::cuda::DType;
using xtc::cuda::Reduction;

namespace {
DType dt(int d) { return static_cast<DType>(d); }
Reduction red(int r) { return static_cast<Reduction>(r); }
}  // namespace

extern "C" {

int64_t xtc_reduction_blocks(int64_t n) { return xtc::cuda::reduction_blocks(n); }

int xtc_masked_cross_entropy_forward(int dtype, const void* logits, const void* target, bool target_is_uint8,
                                     const void* weight, int64_t N, int64_t C, int64_t HW, int64_t ignore_index,
                                     double label_smoothing, int reduction, void* loss, void* log_norm, void* denom,
                                     void* workspace, int32_t* error_flag) {
  return xtc::cuda::masked_cross_entropy_forward(dt(dtype), logits, target, target_is_uint8, weight, N, C, HW,
                                                 ignore_index, label_smoothing, red(reduction), loss, log_norm,
                                                 denom, workspace, error_flag, nullptr);
}

int xtc_masked_cross_entropy_backward(int dtype, const void* grad_loss, const void* logits, const void* target,
                                      bool target_is_uint8, const void* weight, int64_t N, int64_t C, int64_t HW,
                                      int64_t ignore_index, double label_smoothing, int reduction,
                                      const void* log_norm, const void* denom, void* grad_logits) {
  return xtc::cuda::masked_cross_entropy_backward(dt(dtype), grad_loss, logits, target, target_is_uint8, weight, N,
                                                  C, HW, ignore_index, label_smoothing, red(reduction), log_norm,
                                                  denom, grad_logits, nullptr);
}

int xtc_soft_cross_entropy_forward(int dtype, const void* logits, const void* target_logits, const bool* mask,
                                   int64_t N, int64_t C, int64_t HW, int reduction, void* loss, void* log_norm,
                                   void* denom, void* workspace) {
  return xtc::cuda::soft_cross_entropy_forward(dt(dtype), logits, target_logits, mask, N, C, HW, red(reduction),
                                               loss, log_norm, denom, workspace, nullptr);
}

int xtc_soft_cross_entropy_backward(int dtype, const void* grad_loss, const void* logits, const void* target_logits,
                                    const bool* mask, int64_t N, int64_t C, int64_t HW, int reduction,
                                    const void* log_norm, const void* denom, void* grad_logits) {
  return xtc::cuda::soft_cross_entropy_backward(dt(dtype), grad_loss, logits, target_logits, mask, N, C, HW,
                                                red(reduction), log_norm, denom, grad_logits, nullptr);
}

int xtc_masked_l1_loss_forward(int dtype, const void* pred, const void* target, const bool* mask, bool has_invalid,
                               double invalid_value, int64_t N, int64_t C, int64_t HW, int reduction, void* loss,
                               void* denom, void* workspace) {
  return xtc::cuda::masked_l1_loss_forward(dt(dtype), pred, target, mask, has_invalid, invalid_value, N, C, HW,
                                           red(reduction), loss, denom, workspace, nullptr);
}

int xtc_masked_l1_loss_backward(int dtype, const void* grad_loss, const void* pred, const void* target,
                                const bool* mask, bool has_invalid, double invalid_value, int64_t N, int64_t C,
                                int64_t HW, int reduction, const void* denom, void* grad_pred) {
  return xtc::cuda::masked_l1_loss_backward(dt(dtype), grad_loss, pred, target, mask, has_invalid, invalid_value, N,
                                            C, HW, red(reduction), denom, grad_pred, nullptr);
}

int xtc_cosine_similarity_loss_forward(int dtype, const void* a, const void* b, const bool* mask, double eps,
                                       int64_t N, int64_t C, int64_t HW, int reduction, void* loss, void* denom,
                                       void* workspace) {
  return xtc::cuda::cosine_similarity_loss_forward(dt(dtype), a, b, mask, eps, N, C, HW, red(reduction), loss, denom,
                                                   workspace, nullptr);
}

int xtc_cosine_similarity_loss_backward(int dtype, const void* grad_loss, const void* a, const void* b,
                                        const bool* mask, double eps, int64_t N, int64_t C, int64_t HW,
                                        int reduction, const void* denom, void* grad_a, void* grad_b) {
  return xtc::cuda::cosine_similarity_loss_backward(dt(dtype), grad_loss, a, b, mask, eps, N, C, HW, red(reduction),
                                                    denom, grad_a, grad_b, nullptr);
}

int xtc_sigmoid_gate_forward(int dtype, const void* x, const void* gate, int64_t numel, void* out) {
  return xtc::cuda::sigmoid_gate_forward(dt(dtype), x, gate, numel, out, nullptr);
}

int xtc_sigmoid_gate_backward(int dtype, const void* grad_out, bool grad_out_is_scalar, const void* x,
                              const void* gate, int64_t numel, void* grad_x, void* grad_gate) {
  return xtc::cuda::sigmoid_gate_backward(dt(dtype), grad_out, grad_out_is_scalar, x, gate, numel, grad_x, grad_gate,
                                          nullptr);
}
}
