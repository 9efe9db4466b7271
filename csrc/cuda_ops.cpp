// Torch glue of the CUDA kernels, registered for the CUDA dispatch key: argument checks (the op's
// function from checks.h, shared with the CPU and Meta kernels; then "the first input is a CUDA
// tensor"), device guard and current stream, contiguous inputs, output and workspace allocation, and
// the launchers declared in cuda_kernels.h. Sizes passed to a launcher come from the validated layout. No host synchronisation: grad_loss and denom stay on the device, and an
// out-of-range class index is reported by an asynchronous device assert.
// The whole file is empty unless the extension is built with CUDA (XTC_WITH_CUDA = 1).
#if XTC_WITH_CUDA

#include "common.h"
#include "cuda_kernels.h"

#include <ATen/ops/_assert_async.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace xtc {
namespace {

using at::Tensor;

cuda::DType cuda_dtype(const Tensor& t, const char* op) {
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

cuda::Reduction cuda_reduction(Reduction red) {
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
cuda::Reduction grad_mode(const GradLoss& grad, Reduction red) {
  if (grad.per_pixel) return cuda::Reduction::None;
  return red == Reduction::Mean ? cuda::Reduction::Mean : cuda::Reduction::Sum;
}

// The saved denominator in the loss dtype (validated by check_loss_backward).
Tensor prepare_denom(const Tensor& denom, const Tensor& input) { return denom.to(loss_dtype(input)).contiguous(); }

// Saved per-pixel log-normaliser in the loss dtype, contiguous (validated by check_loss_backward).
Tensor prepare_log_norm(const Tensor& log_norm, const Tensor& input) {
  return log_norm.to(loss_dtype(input)).contiguous();
}

const bool* mask_ptr(const OptTensor& mask) { return mask ? mask->const_data_ptr<bool>() : nullptr; }

// Per-block partials of the two-stage reductions over num_pixels pixels.
Tensor reduction_workspace(int64_t num_pixels, const at::TensorOptions& acc_options) {
  return at::empty({2 * cuda::reduction_blocks(num_pixels)}, acc_options);
}

// Outputs of a loss forward: (loss, denom) in the loss dtype; the loss has none_shape for "none".
std::tuple<Tensor, Tensor> loss_outputs(const LossInfo& info, const Tensor& input) {
  const auto opts = input.options().dtype(loss_dtype(input));
  Tensor loss = info.red == Reduction::None ? at::empty_symint(info.none_shape, opts) : at::empty({}, opts);
  return {loss, at::empty({}, opts)};
}

// ---------------------------------------------------------------------------------------------
// masked_cross_entropy

constexpr const char* kCe = "masked_cross_entropy";

// Class weights in the loss dtype, contiguous (nullopt without weights).
OptTensor prepare_weight(const OptTensor& weight, const Tensor& logits) {
  return weight ? OptTensor(weight->to(loss_dtype(logits)).contiguous()) : std::nullopt;
}

std::tuple<Tensor, Tensor, Tensor> masked_cross_entropy_fwd(const Tensor& logits_in, const Tensor& target_in,
                                                            const OptTensor& weight_in, int64_t ignore_index,
                                                            double label_smoothing, c10::string_view reduction) {
  const LossInfo info =
      check_masked_cross_entropy(logits_in, target_in, weight_in, ignore_index, label_smoothing, reduction);
  const CudaCall call(logits_in, kCe, "logits");
  const Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const OptTensor weight = prepare_weight(weight_in, logits);
  const int64_t N = info.layout.n(), C = info.layout.c(), P = info.layout.p();
  const auto opts = logits.options().dtype(loss_dtype(logits));
  Tensor log_norm = at::empty_symint(info.layout.pixel_shape, opts);
  auto [loss, denom] = loss_outputs(info, logits);
  Tensor workspace = reduction_workspace(N * P, opts);
  Tensor error_flag = at::zeros({}, logits.options().dtype(at::kInt));
  C10_CUDA_CHECK(cuda::masked_cross_entropy_forward(
      cuda_dtype(logits, kCe), logits.const_data_ptr(), target.const_data_ptr(), target.scalar_type() == at::kByte,
      weight ? weight->const_data_ptr() : nullptr, N, C, P, ignore_index, label_smoothing,
      cuda_reduction(info.red), loss.data_ptr(), log_norm.data_ptr(), denom.data_ptr(), workspace.data_ptr(),
      error_flag.data_ptr<int32_t>(), call.stream));
  at::_assert_async(error_flag.eq(0),
                    "masked_cross_entropy: target contains a class index outside [0, C) that is not ignore_index");
  return {loss, log_norm, denom};
}

Tensor masked_cross_entropy_bwd(const Tensor& grad_loss_in, const Tensor& logits_in, const Tensor& target_in,
                                const OptTensor& weight_in, const Tensor& log_norm_in, const Tensor& denom_in,
                                int64_t ignore_index, double label_smoothing, c10::string_view reduction) {
  const LossInfo info =
      check_masked_cross_entropy(logits_in, target_in, weight_in, ignore_index, label_smoothing, reduction);
  check_loss_backward(info, kCe, logits_in, grad_loss_in, denom_in, &log_norm_in);
  const CudaCall call(logits_in, kCe, "logits");
  const Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const OptTensor weight = prepare_weight(weight_in, logits);
  const Tensor log_norm = prepare_log_norm(log_norm_in, logits);
  const GradLoss grad_loss = prepare_grad_loss(grad_loss_in, logits, info.red);
  const Tensor denom = prepare_denom(denom_in, logits);
  const int64_t N = info.layout.n(), C = info.layout.c(), P = info.layout.p();
  Tensor grad = at::empty_like(logits, at::MemoryFormat::Contiguous);
  C10_CUDA_CHECK(cuda::masked_cross_entropy_backward(
      cuda_dtype(logits, kCe), grad_loss.values.const_data_ptr(), logits.const_data_ptr(), target.const_data_ptr(),
      target.scalar_type() == at::kByte, weight ? weight->const_data_ptr() : nullptr, N, C, P, ignore_index,
      label_smoothing, grad_mode(grad_loss, info.red), log_norm.const_data_ptr(), denom.const_data_ptr(),
      grad.data_ptr(), call.stream));
  return grad;
}

// ---------------------------------------------------------------------------------------------
// soft_cross_entropy

constexpr const char* kSoftCe = "soft_cross_entropy";

std::tuple<Tensor, Tensor, Tensor> soft_cross_entropy_fwd(const Tensor& logits_in, const Tensor& target_in,
                                                          const OptTensor& mask_in, c10::string_view reduction) {
  const LossInfo info = check_soft_cross_entropy(logits_in, target_in, mask_in, reduction);
  const CudaCall call(logits_in, kSoftCe, "logits");
  const Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const int64_t N = info.layout.n(), C = info.layout.c(), P = info.layout.p();
  const auto opts = logits.options().dtype(loss_dtype(logits));
  Tensor log_norm = at::empty_symint(info.layout.pixel_shape, opts);
  auto [loss, denom] = loss_outputs(info, logits);
  Tensor workspace = reduction_workspace(N * P, opts);
  C10_CUDA_CHECK(cuda::soft_cross_entropy_forward(cuda_dtype(logits, kSoftCe), logits.const_data_ptr(),
                                                  target.const_data_ptr(), mask_ptr(mask), N, C, P,
                                                  cuda_reduction(info.red), loss.data_ptr(), log_norm.data_ptr(),
                                                  denom.data_ptr(), workspace.data_ptr(), call.stream));
  return {loss, log_norm, denom};
}

Tensor soft_cross_entropy_bwd(const Tensor& grad_loss_in, const Tensor& logits_in, const Tensor& target_in,
                              const OptTensor& mask_in, const Tensor& log_norm_in, const Tensor& denom_in,
                              c10::string_view reduction) {
  const LossInfo info = check_soft_cross_entropy(logits_in, target_in, mask_in, reduction);
  check_loss_backward(info, kSoftCe, logits_in, grad_loss_in, denom_in, &log_norm_in);
  const CudaCall call(logits_in, kSoftCe, "logits");
  const Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const Tensor log_norm = prepare_log_norm(log_norm_in, logits);
  const GradLoss grad_loss = prepare_grad_loss(grad_loss_in, logits, info.red);
  const Tensor denom = prepare_denom(denom_in, logits);
  const int64_t N = info.layout.n(), C = info.layout.c(), P = info.layout.p();
  Tensor grad = at::empty_like(logits, at::MemoryFormat::Contiguous);
  C10_CUDA_CHECK(cuda::soft_cross_entropy_backward(
      cuda_dtype(logits, kSoftCe), grad_loss.values.const_data_ptr(), logits.const_data_ptr(),
      target.const_data_ptr(), mask_ptr(mask), N, C, P, grad_mode(grad_loss, info.red), log_norm.const_data_ptr(),
      denom.const_data_ptr(), grad.data_ptr(), call.stream));
  return grad;
}

// ---------------------------------------------------------------------------------------------
// masked_l1_loss

constexpr const char* kL1 = "masked_l1_loss";

std::tuple<Tensor, Tensor> masked_l1_loss_fwd(const Tensor& pred_in, const Tensor& target_in, const OptTensor& mask_in,
                                              std::optional<double> invalid_value, c10::string_view reduction) {
  const LossInfo info = check_masked_l1_loss(pred_in, target_in, mask_in, invalid_value, reduction);
  const CudaCall call(pred_in, kL1, "pred");
  const Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const int64_t N = info.layout.n(), C = info.layout.c(), P = info.layout.p();
  auto [loss, denom] = loss_outputs(info, pred);
  Tensor workspace = reduction_workspace(N * P, pred.options().dtype(loss_dtype(pred)));
  C10_CUDA_CHECK(cuda::masked_l1_loss_forward(cuda_dtype(pred, kL1), pred.const_data_ptr(), target.const_data_ptr(),
                                              mask_ptr(mask), invalid_value.has_value(), invalid_value.value_or(0.0),
                                              N, C, P, cuda_reduction(info.red), loss.data_ptr(), denom.data_ptr(),
                                              workspace.data_ptr(), call.stream));
  return {loss, denom};
}

Tensor masked_l1_loss_bwd(const Tensor& grad_loss_in, const Tensor& pred_in, const Tensor& target_in,
                          const OptTensor& mask_in, const Tensor& denom_in, std::optional<double> invalid_value,
                          c10::string_view reduction) {
  const LossInfo info = check_masked_l1_loss(pred_in, target_in, mask_in, invalid_value, reduction);
  check_loss_backward(info, kL1, pred_in, grad_loss_in, denom_in, nullptr);
  const CudaCall call(pred_in, kL1, "pred");
  const Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const GradLoss grad_loss = prepare_grad_loss(grad_loss_in, pred, info.red);
  const Tensor denom = prepare_denom(denom_in, pred);
  const int64_t N = info.layout.n(), C = info.layout.c(), P = info.layout.p();
  Tensor grad = at::empty_like(pred, at::MemoryFormat::Contiguous);
  C10_CUDA_CHECK(cuda::masked_l1_loss_backward(
      cuda_dtype(pred, kL1), grad_loss.values.const_data_ptr(), pred.const_data_ptr(), target.const_data_ptr(),
      mask_ptr(mask), invalid_value.has_value(), invalid_value.value_or(0.0), N, C, P,
      grad_mode(grad_loss, info.red), denom.const_data_ptr(), grad.data_ptr(), call.stream));
  return grad;
}

// ---------------------------------------------------------------------------------------------
// cosine_similarity_loss

constexpr const char* kCos = "cosine_similarity_loss";

std::tuple<Tensor, Tensor> cosine_similarity_loss_fwd(const Tensor& a_in, const Tensor& b_in, const OptTensor& mask_in,
                                                      double eps, c10::string_view reduction, int64_t dim) {
  const LossInfo info = check_cosine_similarity_loss(a_in, b_in, mask_in, eps, reduction, dim);
  const CudaCall call(a_in, kCos, "a");
  const Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const int64_t N = info.layout.n(), C = info.layout.c(), P = info.layout.p();
  auto [loss, denom] = loss_outputs(info, a);
  Tensor workspace = reduction_workspace(N * P, a.options().dtype(loss_dtype(a)));
  C10_CUDA_CHECK(cuda::cosine_similarity_loss_forward(cuda_dtype(a, kCos), a.const_data_ptr(), b.const_data_ptr(),
                                                      mask_ptr(mask), eps, N, C, P, cuda_reduction(info.red),
                                                      loss.data_ptr(), denom.data_ptr(), workspace.data_ptr(),
                                                      call.stream));
  return {loss, denom};
}

std::tuple<Tensor, Tensor> cosine_similarity_loss_bwd(const Tensor& grad_loss_in, const Tensor& a_in,
                                                      const Tensor& b_in, const OptTensor& mask_in,
                                                      const Tensor& denom_in, double eps, c10::string_view reduction,
                                                      int64_t dim) {
  const LossInfo info = check_cosine_similarity_loss(a_in, b_in, mask_in, eps, reduction, dim);
  check_loss_backward(info, kCos, a_in, grad_loss_in, denom_in, nullptr);
  const CudaCall call(a_in, kCos, "a");
  const Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const GradLoss grad_loss = prepare_grad_loss(grad_loss_in, a, info.red);
  const Tensor denom = prepare_denom(denom_in, a);
  const int64_t N = info.layout.n(), C = info.layout.c(), P = info.layout.p();
  Tensor grad_a = at::empty_like(a, at::MemoryFormat::Contiguous);
  Tensor grad_b = at::empty_like(b, at::MemoryFormat::Contiguous);
  C10_CUDA_CHECK(cuda::cosine_similarity_loss_backward(
      cuda_dtype(a, kCos), grad_loss.values.const_data_ptr(), a.const_data_ptr(), b.const_data_ptr(), mask_ptr(mask),
      eps, N, C, P, grad_mode(grad_loss, info.red), denom.const_data_ptr(), grad_a.data_ptr(), grad_b.data_ptr(),
      call.stream));
  return {grad_a, grad_b};
}

// ---------------------------------------------------------------------------------------------
// sigmoid_gate: elementwise over the raw memory of operands laid out like the output (x's layout).

constexpr const char* kGate = "sigmoid_gate";

Tensor sigmoid_gate(const Tensor& x_in, const Tensor& gate_in) {
  check_sigmoid_gate(x_in, gate_in);
  const CudaCall call(x_in, kGate, "x");
  Tensor out = at::empty_like(x_in);
  const Tensor x = dense_like(x_in, out), gate = dense_like(gate_in, out);
  C10_CUDA_CHECK(cuda::sigmoid_gate_forward(cuda_dtype(x, kGate), x.const_data_ptr(), gate.const_data_ptr(), x.numel(),
                                            out.data_ptr(), call.stream));
  return out;
}

std::tuple<Tensor, Tensor> sigmoid_gate_bwd(const Tensor& grad_out_in, const Tensor& x_in, const Tensor& gate_in) {
  check_sigmoid_gate_bwd(grad_out_in, x_in, gate_in);
  const CudaCall call(x_in, kGate, "x");
  Tensor grad_x = at::empty_like(x_in);
  Tensor grad_gate = at::empty_like(grad_x);
  const Tensor x = dense_like(x_in, grad_x), gate = dense_like(gate_in, grad_x);
  const bool scalar_grad = is_broadcast_scalar(grad_out_in);
  const Tensor grad_out = scalar_grad ? grad_out_in : dense_like(grad_out_in, grad_x);
  C10_CUDA_CHECK(cuda::sigmoid_gate_backward(cuda_dtype(x, kGate), grad_out.const_data_ptr(), scalar_grad,
                                             x.const_data_ptr(), gate.const_data_ptr(), x.numel(), grad_x.data_ptr(),
                                             grad_gate.data_ptr(), call.stream));
  return {grad_x, grad_gate};
}

}  // namespace

TORCH_LIBRARY_IMPL(xtc_ext, CUDA, m) { XTC_REGISTER_KERNELS(m); }

}  // namespace xtc

#endif  // XTC_WITH_CUDA
