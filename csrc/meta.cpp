// Meta kernels of every op: the fake-tensor implementations that torch.compile, FakeTensor and meta
// tensors use. Each validates its arguments with the same function as the CPU and CUDA kernels
// (checks.h, symbolic shapes: no dimension is specialised) and allocates outputs of the real kernels'
// shapes, dtypes and strides. A meta tensor mixed with a tensor on another device dispatches here and
// fails the device check, naming the argument.
#include <torch/library.h>

#include <tuple>

#include "checks.h"

namespace xtc {
namespace {

using at::Tensor;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor2 = std::tuple<Tensor, Tensor>;

// (loss, denom) of a forward: the loss has none_shape for reduction "none", else it is 0-D.
Tensor2 loss_outputs(const LossInfo& info, const Tensor& input) {
  const auto opts = input.options().dtype(loss_dtype(input));
  Tensor loss = info.red == Reduction::None ? at::empty_symint(info.none_shape, opts) : at::empty({}, opts);
  return {loss, at::empty({}, opts)};
}

// (loss, lse_minus_max, denom) of the two cross-entropies.
Tensor3 ce_outputs(const LossInfo& info, const Tensor& logits) {
  auto [loss, denom] = loss_outputs(info, logits);
  Tensor lse = at::empty_symint(info.layout.pixel_shape, logits.options().dtype(loss_dtype(logits)));
  return {loss, lse, denom};
}

Tensor contiguous_like(const Tensor& t) { return at::empty_like(t, at::MemoryFormat::Contiguous); }

Tensor3 masked_cross_entropy_fwd(const Tensor& logits, const Tensor& target, const OptTensor& weight,
                                 int64_t ignore_index, double label_smoothing, c10::string_view reduction) {
  return ce_outputs(check_masked_cross_entropy(logits, target, weight, ignore_index, label_smoothing, reduction),
                    logits);
}

Tensor masked_cross_entropy_bwd(const Tensor& grad_loss, const Tensor& logits, const Tensor& target,
                                const OptTensor& weight, const Tensor& lse, const Tensor& denom, int64_t ignore_index,
                                double label_smoothing, c10::string_view reduction) {
  const LossInfo info = check_masked_cross_entropy(logits, target, weight, ignore_index, label_smoothing, reduction);
  check_loss_backward(info, "masked_cross_entropy", logits, grad_loss, denom, &lse);
  return contiguous_like(logits);
}

Tensor3 soft_cross_entropy_fwd(const Tensor& logits, const Tensor& target_logits, const OptTensor& mask,
                               c10::string_view reduction) {
  return ce_outputs(check_soft_cross_entropy(logits, target_logits, mask, reduction), logits);
}

Tensor soft_cross_entropy_bwd(const Tensor& grad_loss, const Tensor& logits, const Tensor& target_logits,
                              const OptTensor& mask, const Tensor& lse, const Tensor& denom,
                              c10::string_view reduction) {
  const LossInfo info = check_soft_cross_entropy(logits, target_logits, mask, reduction);
  check_loss_backward(info, "soft_cross_entropy", logits, grad_loss, denom, &lse);
  return contiguous_like(logits);
}

Tensor2 masked_l1_loss_fwd(const Tensor& pred, const Tensor& target, const OptTensor& mask,
                           std::optional<double> invalid_value, c10::string_view reduction) {
  return loss_outputs(check_masked_l1_loss(pred, target, mask, invalid_value, reduction), pred);
}

Tensor masked_l1_loss_bwd(const Tensor& grad_loss, const Tensor& pred, const Tensor& target, const OptTensor& mask,
                          const Tensor& denom, std::optional<double> invalid_value, c10::string_view reduction) {
  const LossInfo info = check_masked_l1_loss(pred, target, mask, invalid_value, reduction);
  check_loss_backward(info, "masked_l1_loss", pred, grad_loss, denom, nullptr);
  return contiguous_like(pred);
}

Tensor2 cosine_similarity_loss_fwd(const Tensor& a, const Tensor& b, const OptTensor& mask, double eps,
                                   c10::string_view reduction, int64_t dim) {
  return loss_outputs(check_cosine_similarity_loss(a, b, mask, eps, reduction, dim), a);
}

Tensor2 cosine_similarity_loss_bwd(const Tensor& grad_loss, const Tensor& a, const Tensor& b, const OptTensor& mask,
                                   const Tensor& denom, double eps, c10::string_view reduction, int64_t dim) {
  const LossInfo info = check_cosine_similarity_loss(a, b, mask, eps, reduction, dim);
  check_loss_backward(info, "cosine_similarity_loss", a, grad_loss, denom, nullptr);
  return {contiguous_like(a), contiguous_like(b)};
}

Tensor sigmoid_gate(const Tensor& x, const Tensor& gate_logits) {
  check_sigmoid_gate(x, gate_logits);
  return at::empty_like(x);
}

Tensor2 sigmoid_gate_bwd(const Tensor& grad_out, const Tensor& x, const Tensor& gate_logits) {
  check_sigmoid_gate_bwd(grad_out, x, gate_logits);
  Tensor grad_x = at::empty_like(x);
  return {grad_x, at::empty_like(grad_x)};
}

}  // namespace

TORCH_LIBRARY_IMPL(xtc_ext, Meta, m) { XTC_REGISTER_KERNELS(m); }

}  // namespace xtc
