// Torch glue of the CUDA kernels, registered for the CUDA dispatch key: argument checks (the CPU
// kernels' helpers from common.h, plus "every tensor on the same CUDA device"), device guard and
// current stream, contiguous inputs, output and workspace allocation, and the launchers declared in
// cuda_kernels.h. No host synchronisation: grad_loss and denom stay on the device, and an
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
using OptTensor = std::optional<at::Tensor>;

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

void check_cuda(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor here, got one on ", t.device());
}

void check_device(const Tensor& t, const Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but the input is on ",
              ref.device());
}

// The saved denominator: a one-element tensor on the input's device, in the loss dtype.
Tensor prepare_denom(const Tensor& denom, const Tensor& input, const char* op) {
  check_device(denom, input, op, "denom");
  TORCH_CHECK_VALUE(denom.numel() == 1, op, ": denom must have one element, got shape ", denom.sizes());
  return denom.to(loss_dtype(input)).contiguous();
}

// Upstream gradient in the loss dtype, contiguous, on the input's device.
Tensor prepare_grad(const Tensor& grad_loss, const Tensor& input, Reduction red, at::IntArrayRef none_shape,
                    const char* op) {
  check_device(grad_loss, input, op, "grad_loss");
  return prepare_grad_loss(grad_loss, input, red, none_shape, op);
}

// Saved per-pixel log-normaliser: [N, H, W] on the input's device, in the loss dtype.
Tensor prepare_log_norm(const Tensor& log_norm, const Tensor& input, const char* op) {
  check_pixel_map(log_norm, input, op, "lse_minus_max");
  return log_norm.to(loss_dtype(input)).contiguous();
}

OptTensor contiguous_mask(const OptTensor& mask) {
  return mask ? OptTensor(mask->contiguous()) : std::nullopt;
}

const bool* mask_ptr(const OptTensor& mask) { return mask ? mask->const_data_ptr<bool>() : nullptr; }

// Per-block partials of the two-stage reductions over num_pixels pixels.
Tensor reduction_workspace(int64_t num_pixels, const at::TensorOptions& acc_options) {
  return at::empty({2 * cuda::reduction_blocks(num_pixels)}, acc_options);
}

// ---------------------------------------------------------------------------------------------
// masked_cross_entropy

constexpr const char* kCe = "masked_cross_entropy";

void check_ce_inputs(const Tensor& logits, const Tensor& target, const OptTensor& weight, double label_smoothing) {
  check_float_input(logits, kCe, "logits", 4);
  TORCH_CHECK_VALUE(logits.size(1) >= 1, kCe, ": logits must have at least one class, got shape ", logits.sizes());
  check_cuda(logits, kCe, "logits");
  check_pixel_map(target, logits, kCe, "target");
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong || target.scalar_type() == at::kByte, kCe,
                   ": target must be int64 or uint8 class indices, got ", target.scalar_type());
  if (weight) {
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == logits.size(1), kCe,
                      ": weight must have shape [C] = [", logits.size(1), "], got ", weight->sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(weight->scalar_type()), kCe, ": weight must be floating point, got ",
                     weight->scalar_type());
    TORCH_CHECK(weight->device() == logits.device(), kCe, ": weight is on ", weight->device(),
                " but logits is on ", logits.device());
  }
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, kCe,
                    ": label_smoothing must be in [0, 1], got ", label_smoothing);
}

// Class weights in the loss dtype, contiguous (nullopt without weights).
OptTensor prepare_weight(const OptTensor& weight, const Tensor& logits) {
  return weight ? OptTensor(weight->to(loss_dtype(logits)).contiguous()) : std::nullopt;
}

std::tuple<Tensor, Tensor, Tensor> masked_cross_entropy_fwd(const Tensor& logits_in, const Tensor& target_in,
                                                            const OptTensor& weight_in, int64_t ignore_index,
                                                            double label_smoothing, c10::string_view reduction) {
  check_ce_inputs(logits_in, target_in, weight_in, label_smoothing);
  const Reduction red = parse_reduction(reduction, kCe);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const OptTensor weight = prepare_weight(weight_in, logits);
  const int64_t N = logits.size(0), C = logits.size(1), H = logits.size(2), W = logits.size(3);
  const auto opts = logits.options().dtype(loss_dtype(logits));
  Tensor log_norm = at::empty({N, H, W}, opts);
  Tensor loss = red == Reduction::None ? at::empty({N, H, W}, opts) : at::empty({}, opts);
  Tensor denom = at::empty({}, opts);
  Tensor workspace = reduction_workspace(N * H * W, opts);
  Tensor error_flag = at::zeros({}, logits.options().dtype(at::kInt));
  C10_CUDA_CHECK(cuda::masked_cross_entropy_forward(
      cuda_dtype(logits, kCe), logits.const_data_ptr(), target.const_data_ptr(), target.scalar_type() == at::kByte,
      weight ? weight->const_data_ptr() : nullptr, N, C, H * W, ignore_index, label_smoothing, cuda_reduction(red),
      loss.data_ptr(), log_norm.data_ptr(), denom.data_ptr(), workspace.data_ptr(), error_flag.data_ptr<int32_t>(),
      stream));
  at::_assert_async(error_flag.eq(0),
                    "masked_cross_entropy: target contains a class index outside [0, C) that is not ignore_index");
  return {loss, log_norm, denom};
}

Tensor masked_cross_entropy_bwd(const Tensor& grad_loss_in, const Tensor& logits_in, const Tensor& target_in,
                                const OptTensor& weight_in, const Tensor& log_norm_in, const Tensor& denom_in,
                                int64_t ignore_index, double label_smoothing, c10::string_view reduction) {
  check_ce_inputs(logits_in, target_in, weight_in, label_smoothing);
  const Reduction red = parse_reduction(reduction, kCe);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const OptTensor weight = prepare_weight(weight_in, logits);
  const Tensor log_norm = prepare_log_norm(log_norm_in, logits, kCe);
  const Tensor grad_loss = prepare_grad(grad_loss_in, logits, red, log_norm.sizes(), kCe);
  const Tensor denom = prepare_denom(denom_in, logits, kCe);
  const int64_t N = logits.size(0), C = logits.size(1), HW = logits.size(2) * logits.size(3);
  Tensor grad = at::empty_like(logits, at::MemoryFormat::Contiguous);
  C10_CUDA_CHECK(cuda::masked_cross_entropy_backward(
      cuda_dtype(logits, kCe), grad_loss.const_data_ptr(), logits.const_data_ptr(), target.const_data_ptr(),
      target.scalar_type() == at::kByte, weight ? weight->const_data_ptr() : nullptr, N, C, HW, ignore_index,
      label_smoothing, cuda_reduction(red), log_norm.const_data_ptr(), denom.const_data_ptr(), grad.data_ptr(),
      stream));
  return grad;
}

// ---------------------------------------------------------------------------------------------
// soft_cross_entropy

constexpr const char* kSoftCe = "soft_cross_entropy";

void check_soft_ce_inputs(const Tensor& logits, const Tensor& target_logits, const OptTensor& mask) {
  check_float_input(logits, kSoftCe, "logits", 4);
  check_cuda(logits, kSoftCe, "logits");
  check_same(logits, target_logits, kSoftCe, "logits", "target_logits");
  check_mask(mask, logits, kSoftCe);
}

std::tuple<Tensor, Tensor, Tensor> soft_cross_entropy_fwd(const Tensor& logits_in, const Tensor& target_in,
                                                          const OptTensor& mask_in, c10::string_view reduction) {
  check_soft_ce_inputs(logits_in, target_in, mask_in);
  const Reduction red = parse_reduction(reduction, kSoftCe);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const OptTensor mask = contiguous_mask(mask_in);
  const int64_t N = logits.size(0), C = logits.size(1), H = logits.size(2), W = logits.size(3);
  const auto opts = logits.options().dtype(loss_dtype(logits));
  Tensor log_norm = at::empty({N, H, W}, opts);
  Tensor loss = red == Reduction::None ? at::empty({N, H, W}, opts) : at::empty({}, opts);
  Tensor denom = at::empty({}, opts);
  Tensor workspace = reduction_workspace(N * H * W, opts);
  C10_CUDA_CHECK(cuda::soft_cross_entropy_forward(cuda_dtype(logits, kSoftCe), logits.const_data_ptr(),
                                                  target.const_data_ptr(), mask_ptr(mask), N, C, H * W,
                                                  cuda_reduction(red), loss.data_ptr(), log_norm.data_ptr(),
                                                  denom.data_ptr(), workspace.data_ptr(), stream));
  return {loss, log_norm, denom};
}

Tensor soft_cross_entropy_bwd(const Tensor& grad_loss_in, const Tensor& logits_in, const Tensor& target_in,
                              const OptTensor& mask_in, const Tensor& log_norm_in, const Tensor& denom_in,
                              c10::string_view reduction) {
  check_soft_ce_inputs(logits_in, target_in, mask_in);
  const Reduction red = parse_reduction(reduction, kSoftCe);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const OptTensor mask = contiguous_mask(mask_in);
  const Tensor log_norm = prepare_log_norm(log_norm_in, logits, kSoftCe);
  const Tensor grad_loss = prepare_grad(grad_loss_in, logits, red, log_norm.sizes(), kSoftCe);
  const Tensor denom = prepare_denom(denom_in, logits, kSoftCe);
  const int64_t N = logits.size(0), C = logits.size(1), HW = logits.size(2) * logits.size(3);
  Tensor grad = at::empty_like(logits, at::MemoryFormat::Contiguous);
  C10_CUDA_CHECK(cuda::soft_cross_entropy_backward(cuda_dtype(logits, kSoftCe), grad_loss.const_data_ptr(),
                                                   logits.const_data_ptr(), target.const_data_ptr(), mask_ptr(mask),
                                                   N, C, HW, cuda_reduction(red), log_norm.const_data_ptr(),
                                                   denom.const_data_ptr(), grad.data_ptr(), stream));
  return grad;
}

// ---------------------------------------------------------------------------------------------
// masked_l1_loss

constexpr const char* kL1 = "masked_l1_loss";

void check_l1_inputs(const Tensor& pred, const Tensor& target, const OptTensor& mask) {
  check_float_input(pred, kL1, "pred", 4);
  check_cuda(pred, kL1, "pred");
  check_same(pred, target, kL1, "pred", "target");
  check_mask(mask, pred, kL1);
}

std::tuple<Tensor, Tensor> masked_l1_loss_fwd(const Tensor& pred_in, const Tensor& target_in, const OptTensor& mask_in,
                                              std::optional<double> invalid_value, c10::string_view reduction) {
  check_l1_inputs(pred_in, target_in, mask_in);
  const Reduction red = parse_reduction(reduction, kL1);
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const OptTensor mask = contiguous_mask(mask_in);
  const int64_t N = pred.size(0), C = pred.size(1), HW = pred.size(2) * pred.size(3);
  const auto opts = pred.options().dtype(loss_dtype(pred));
  Tensor loss = red == Reduction::None ? at::empty(pred.sizes(), opts) : at::empty({}, opts);
  Tensor denom = at::empty({}, opts);
  Tensor workspace = reduction_workspace(N * HW, opts);
  C10_CUDA_CHECK(cuda::masked_l1_loss_forward(cuda_dtype(pred, kL1), pred.const_data_ptr(), target.const_data_ptr(),
                                              mask_ptr(mask), invalid_value.has_value(), invalid_value.value_or(0.0),
                                              N, C, HW, cuda_reduction(red), loss.data_ptr(), denom.data_ptr(),
                                              workspace.data_ptr(), stream));
  return {loss, denom};
}

Tensor masked_l1_loss_bwd(const Tensor& grad_loss_in, const Tensor& pred_in, const Tensor& target_in,
                          const OptTensor& mask_in, const Tensor& denom_in, std::optional<double> invalid_value,
                          c10::string_view reduction) {
  check_l1_inputs(pred_in, target_in, mask_in);
  const Reduction red = parse_reduction(reduction, kL1);
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const OptTensor mask = contiguous_mask(mask_in);
  const Tensor grad_loss = prepare_grad(grad_loss_in, pred, red, pred.sizes(), kL1);
  const Tensor denom = prepare_denom(denom_in, pred, kL1);
  const int64_t N = pred.size(0), C = pred.size(1), HW = pred.size(2) * pred.size(3);
  Tensor grad = at::empty_like(pred, at::MemoryFormat::Contiguous);
  C10_CUDA_CHECK(cuda::masked_l1_loss_backward(cuda_dtype(pred, kL1), grad_loss.const_data_ptr(), pred.const_data_ptr(),
                                               target.const_data_ptr(), mask_ptr(mask), invalid_value.has_value(),
                                               invalid_value.value_or(0.0), N, C, HW, cuda_reduction(red),
                                               denom.const_data_ptr(), grad.data_ptr(), stream));
  return grad;
}

// ---------------------------------------------------------------------------------------------
// cosine_similarity_loss

constexpr const char* kCos = "cosine_similarity_loss";

void check_cos_inputs(const Tensor& a, const Tensor& b, const OptTensor& mask, double eps) {
  check_float_input(a, kCos, "a", 4);
  check_cuda(a, kCos, "a");
  check_same(a, b, kCos, "a", "b");
  check_mask(mask, a, kCos);
  TORCH_CHECK_VALUE(eps > 0, kCos, ": eps must be > 0, got ", eps);
}

std::tuple<Tensor, Tensor> cosine_similarity_loss_fwd(const Tensor& a_in, const Tensor& b_in, const OptTensor& mask_in,
                                                      double eps, c10::string_view reduction) {
  check_cos_inputs(a_in, b_in, mask_in, eps);
  const Reduction red = parse_reduction(reduction, kCos);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const OptTensor mask = contiguous_mask(mask_in);
  const int64_t N = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  const auto opts = a.options().dtype(loss_dtype(a));
  Tensor loss = red == Reduction::None ? at::empty({N, H, W}, opts) : at::empty({}, opts);
  Tensor denom = at::empty({}, opts);
  Tensor workspace = reduction_workspace(N * H * W, opts);
  C10_CUDA_CHECK(cuda::cosine_similarity_loss_forward(cuda_dtype(a, kCos), a.const_data_ptr(), b.const_data_ptr(),
                                                      mask_ptr(mask), eps, N, C, H * W, cuda_reduction(red),
                                                      loss.data_ptr(), denom.data_ptr(), workspace.data_ptr(), stream));
  return {loss, denom};
}

std::tuple<Tensor, Tensor> cosine_similarity_loss_bwd(const Tensor& grad_loss_in, const Tensor& a_in,
                                                      const Tensor& b_in, const OptTensor& mask_in,
                                                      const Tensor& denom_in, double eps, c10::string_view reduction) {
  check_cos_inputs(a_in, b_in, mask_in, eps);
  const Reduction red = parse_reduction(reduction, kCos);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const OptTensor mask = contiguous_mask(mask_in);
  const int64_t N = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  const Tensor grad_loss = prepare_grad(grad_loss_in, a, red, {N, H, W}, kCos);
  const Tensor denom = prepare_denom(denom_in, a, kCos);
  Tensor grad_a = at::empty_like(a, at::MemoryFormat::Contiguous);
  Tensor grad_b = at::empty_like(b, at::MemoryFormat::Contiguous);
  C10_CUDA_CHECK(cuda::cosine_similarity_loss_backward(cuda_dtype(a, kCos), grad_loss.const_data_ptr(),
                                                       a.const_data_ptr(), b.const_data_ptr(), mask_ptr(mask), eps, N,
                                                       C, H * W, cuda_reduction(red), denom.const_data_ptr(),
                                                       grad_a.data_ptr(), grad_b.data_ptr(), stream));
  return {grad_a, grad_b};
}

// ---------------------------------------------------------------------------------------------
// sigmoid_gate

constexpr const char* kGate = "sigmoid_gate";

void check_gate_inputs(const Tensor& x, const Tensor& gate_logits) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), kGate, ": x must be floating point, got ", x.scalar_type());
  check_cuda(x, kGate, "x");
  check_same(x, gate_logits, kGate, "x", "gate_logits");
}

Tensor sigmoid_gate(const Tensor& x_in, const Tensor& gate_in) {
  check_gate_inputs(x_in, gate_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor x = x_in.contiguous(), gate = gate_in.contiguous();
  Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  C10_CUDA_CHECK(cuda::sigmoid_gate_forward(cuda_dtype(x, kGate), x.const_data_ptr(), gate.const_data_ptr(), x.numel(),
                                            out.data_ptr(), stream));
  return out;
}

std::tuple<Tensor, Tensor> sigmoid_gate_bwd(const Tensor& grad_out_in, const Tensor& x_in, const Tensor& gate_in) {
  check_gate_inputs(x_in, gate_in);
  check_same(x_in, grad_out_in, kGate, "x", "grad_out");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor x = x_in.contiguous(), gate = gate_in.contiguous(), grad_out = grad_out_in.contiguous();
  Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  Tensor grad_gate = at::empty_like(gate, at::MemoryFormat::Contiguous);
  C10_CUDA_CHECK(cuda::sigmoid_gate_backward(cuda_dtype(x, kGate), grad_out.const_data_ptr(), x.const_data_ptr(),
                                             gate.const_data_ptr(), x.numel(), grad_x.data_ptr(), grad_gate.data_ptr(),
                                             stream));
  return {grad_x, grad_gate};
}

}  // namespace

TORCH_LIBRARY_IMPL(xtc_ext, CUDA, m) {
  m.impl("masked_cross_entropy_fwd", &masked_cross_entropy_fwd);
  m.impl("masked_cross_entropy_bwd", &masked_cross_entropy_bwd);
  m.impl("soft_cross_entropy_fwd", &soft_cross_entropy_fwd);
  m.impl("soft_cross_entropy_bwd", &soft_cross_entropy_bwd);
  m.impl("masked_l1_loss_fwd", &masked_l1_loss_fwd);
  m.impl("masked_l1_loss_bwd", &masked_l1_loss_bwd);
  m.impl("cosine_similarity_loss_fwd", &cosine_similarity_loss_fwd);
  m.impl("cosine_similarity_loss_bwd", &cosine_similarity_loss_bwd);
  m.impl("sigmoid_gate", &sigmoid_gate);
  m.impl("sigmoid_gate_bwd", &sigmoid_gate_bwd);
}

}  // namespace xtc

#endif  // XTC_WITH_CUDA
