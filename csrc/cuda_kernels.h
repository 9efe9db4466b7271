// Launchers of the CUDA kernels. This header is the whole interface between the kernels (the .cu
// files, which include only CUDA headers and this file) and the torch glue (the gpu:: section of each csrc/<op>.cpp, cuda_glue.h), so the
// .cu files compile in about a second and can be compile-checked on machines without a GPU.
//
// Conventions shared by every launcher:
// - Tensors are contiguous [N, C, HW] (any input seen with its class/channel dimension in the middle,
//   checks.h); "pixel" p = n * HW + hw indexes the per-pixel maps. N, C, HW come from validated shapes.
// - `acc` is the accumulation / loss type: float for float32, float16 and bfloat16 inputs,
//   double for float64 inputs. Losses, denominators, saved per-pixel values and grad_loss are acc.
// - Reductions: per-block partial sums written to `workspace` (2 * reduction_blocks(P) acc values),
//   then one single-block kernel adds them in a fixed order: deterministic, no float atomics.
//   denom = the count (or summed class weight) as computed; the mean is sum / denom, and 0 (with a zero
//   gradient) when denom is 0.
// - grad_loss is read on the device: a scalar for mean/sum (the kernel divides by *denom for mean),
//   or per-pixel (per-element for masked_l1_loss) for reduction none; the glue passes Sum for a
//   reduction-none gradient that is one value broadcast everywhere. No host synchronisation.
// - Every launcher enqueues on `stream` and returns the cudaError_t of its launches.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace xtc::cuda {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2, Float64 = 3 };
enum class Reduction : int { None = 0, Mean = 1, Sum = 2 };

// Upper bound of the number of per-block partials of a reduction over `num_items` pixels (the vector
// paths use fewer); the workspace holds twice that. Depends only on num_items, never on the device.
int64_t reduction_blocks(int64_t num_items);

// masked_cross_entropy forward. target: int64 or uint8 [N,HW]; weight: acc [C] or nullptr.
// Writes loss (acc scalar, or [N*HW] for None), log_norm[N*HW] = log sum_c exp(z_c - max_c z),
// denom (acc scalar: number of valid pixels, or sum of weight[target] over them). A target that is
// neither ignore_index nor in [0, C) sets *error_flag = 1 (never used as an offset).
cudaError_t masked_cross_entropy_forward(DType dtype, const void* logits, const void* target, bool target_is_uint8,
                                         const void* weight, int64_t N, int64_t C, int64_t HW, int64_t ignore_index,
                                         double label_smoothing, Reduction reduction, void* loss, void* log_norm,
                                         void* denom, void* workspace, int32_t* error_flag, cudaStream_t stream);

// grad_logits (input dtype, [N,C,HW]) of masked_cross_entropy.
cudaError_t masked_cross_entropy_backward(DType dtype, const void* grad_loss, const void* logits, const void* target,
                                          bool target_is_uint8, const void* weight, int64_t N, int64_t C, int64_t HW,
                                          int64_t ignore_index, double label_smoothing, Reduction reduction,
                                          const void* log_norm, const void* denom, void* grad_logits,
                                          cudaStream_t stream);

// soft_cross_entropy forward: mask is bool [N*HW] or nullptr. Writes loss, log_norm (of logits), denom.
cudaError_t soft_cross_entropy_forward(DType dtype, const void* logits, const void* target_logits, const bool* mask,
                                       int64_t N, int64_t C, int64_t HW, Reduction reduction, void* loss,
                                       void* log_norm, void* denom, void* workspace, cudaStream_t stream);

cudaError_t soft_cross_entropy_backward(DType dtype, const void* grad_loss, const void* logits,
                                        const void* target_logits, const bool* mask, int64_t N, int64_t C, int64_t HW,
                                        Reduction reduction, const void* log_norm, const void* denom,
                                        void* grad_logits, cudaStream_t stream);

// masked_l1_loss forward over [N,C,HW] elements; element valid when mask[n*HW+hw] (if mask) and
// target != invalid_value (if has_invalid). loss: acc scalar or [N*C*HW] for None.
cudaError_t masked_l1_loss_forward(DType dtype, const void* pred, const void* target, const bool* mask,
                                   bool has_invalid, double invalid_value, int64_t N, int64_t C, int64_t HW,
                                   Reduction reduction, void* loss, void* denom, void* workspace,
                                   cudaStream_t stream);

cudaError_t masked_l1_loss_backward(DType dtype, const void* grad_loss, const void* pred, const void* target,
                                    const bool* mask, bool has_invalid, double invalid_value, int64_t N, int64_t C,
                                    int64_t HW, Reduction reduction, const void* denom, void* grad_pred,
                                    cudaStream_t stream);

// cosine_similarity_loss forward: per pixel 1 - <a,b> / (max(|a|, eps) * max(|b|, eps)) over C.
cudaError_t cosine_similarity_loss_forward(DType dtype, const void* a, const void* b, const bool* mask, double eps,
                                           int64_t N, int64_t C, int64_t HW, Reduction reduction, void* loss,
                                           void* denom, void* workspace, cudaStream_t stream);

// grad_a and grad_b (input dtype; either may be nullptr when not needed).
cudaError_t cosine_similarity_loss_backward(DType dtype, const void* grad_loss, const void* a, const void* b,
                                            const bool* mask, double eps, int64_t N, int64_t C, int64_t HW,
                                            Reduction reduction, const void* denom, void* grad_a, void* grad_b,
                                            cudaStream_t stream);

// sigmoid_gate: out = x * sigmoid(gate) elementwise over numel elements (input dtype, fp32 math).
cudaError_t sigmoid_gate_forward(DType dtype, const void* x, const void* gate, int64_t numel, void* out,
                                 cudaStream_t stream);

// grad_x = grad_out * sigmoid(gate), grad_gate = grad_out * x * s * (1 - s) (either may be nullptr);
// grad_out_is_scalar: grad_out points at one value used for every element.
cudaError_t sigmoid_gate_backward(DType dtype, const void* grad_out, bool grad_out_is_scalar, const void* x,
                                  const void* gate, int64_t numel, void* grad_x, void* grad_gate,
                                  cudaStream_t stream);

}  // namespace xtc::cuda
