// The xtc_ext operator library: schemas of every op, and the public ops as CompositeImplicitAutograd
// wrappers around the internal *_fwd kernels (whose autograd, double backward and fake kernels are
// registered from Python in xtc_ext/ops.py). Device kernels live in one file per op.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>

namespace xtc {
namespace {

using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor2 = std::tuple<Tensor, Tensor>;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Accepts a per-pixel mask as [N,1,H,W] or [N,H,W], of any dtype (nonzero = valid); kernels take [N,H,W] bool.
OptTensor pixel_mask(const OptTensor& mask, const char* op) {
  if (!mask) return std::nullopt;
  Tensor m = *mask;
  if (m.dim() == 4) {
    TORCH_CHECK_VALUE(m.size(1) == 1, op, ": mask must have shape [N,1,H,W] or [N,H,W], got ", m.sizes());
    m = m.squeeze(1);
  }
  if (m.scalar_type() != at::kBool) m = m.ne(0);
  return m;
}

Tensor masked_cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index, const OptTensor& weight,
                            double label_smoothing, c10::string_view reduction) {
  static auto fwd = find_op<Tensor3(const Tensor&, const Tensor&, const OptTensor&, int64_t, double, c10::string_view)>(
      "xtc_ext::masked_cross_entropy_fwd");
  return std::get<0>(fwd.call(logits, target, weight, ignore_index, label_smoothing, reduction));
}

Tensor masked_l1_loss(const Tensor& pred, const Tensor& target, const OptTensor& mask,
                      std::optional<double> invalid_value, c10::string_view reduction) {
  static auto fwd = find_op<Tensor2(const Tensor&, const Tensor&, const OptTensor&, std::optional<double>,
                                    c10::string_view)>("xtc_ext::masked_l1_loss_fwd");
  return std::get<0>(fwd.call(pred, target, pixel_mask(mask, "masked_l1_loss"), invalid_value, reduction));
}

Tensor soft_cross_entropy(const Tensor& logits, const Tensor& target_logits, const OptTensor& mask,
                          c10::string_view reduction) {
  static auto fwd = find_op<Tensor3(const Tensor&, const Tensor&, const OptTensor&, c10::string_view)>(
      "xtc_ext::soft_cross_entropy_fwd");
  return std::get<0>(fwd.call(logits, target_logits, pixel_mask(mask, "soft_cross_entropy"), reduction));
}

Tensor cosine_similarity_loss(const Tensor& a, const Tensor& b, const OptTensor& mask, double eps,
                              c10::string_view reduction) {
  static auto fwd = find_op<Tensor2(const Tensor&, const Tensor&, const OptTensor&, double, c10::string_view)>(
      "xtc_ext::cosine_similarity_loss_fwd");
  return std::get<0>(fwd.call(a, b, pixel_mask(mask, "cosine_similarity_loss"), eps, reduction));
}

}  // namespace

TORCH_LIBRARY(xtc_ext, m) {
  m.def("masked_cross_entropy(Tensor logits, Tensor target, int ignore_index=-1, Tensor? weight=None,"
        " float label_smoothing=0.0, str reduction=\"mean\") -> Tensor");
  m.def("masked_cross_entropy_fwd(Tensor logits, Tensor target, Tensor? weight, int ignore_index,"
        " float label_smoothing, str reduction) -> (Tensor loss, Tensor lse_minus_max, Tensor denom)");
  m.def("masked_cross_entropy_bwd(Tensor grad_loss, Tensor logits, Tensor target, Tensor? weight,"
        " Tensor lse_minus_max, Tensor denom, int ignore_index, float label_smoothing, str reduction) -> Tensor");

  m.def("masked_l1_loss(Tensor pred, Tensor target, Tensor? mask=None, float? invalid_value=0.0,"
        " str reduction=\"mean\") -> Tensor");
  m.def("masked_l1_loss_fwd(Tensor pred, Tensor target, Tensor? mask, float? invalid_value, str reduction)"
        " -> (Tensor loss, Tensor denom)");
  m.def("masked_l1_loss_bwd(Tensor grad_loss, Tensor pred, Tensor target, Tensor? mask, Tensor denom,"
        " float? invalid_value, str reduction) -> Tensor");

  m.def("soft_cross_entropy(Tensor logits, Tensor target_logits, Tensor? mask=None, str reduction=\"mean\")"
        " -> Tensor");
  m.def("soft_cross_entropy_fwd(Tensor logits, Tensor target_logits, Tensor? mask, str reduction)"
        " -> (Tensor loss, Tensor lse_minus_max, Tensor denom)");
  m.def("soft_cross_entropy_bwd(Tensor grad_loss, Tensor logits, Tensor target_logits, Tensor? mask,"
        " Tensor lse_minus_max, Tensor denom, str reduction) -> Tensor");

  m.def("cosine_similarity_loss(Tensor a, Tensor b, Tensor? mask=None, float eps=1e-8, str reduction=\"mean\")"
        " -> Tensor");
  m.def("cosine_similarity_loss_fwd(Tensor a, Tensor b, Tensor? mask, float eps, str reduction)"
        " -> (Tensor loss, Tensor denom)");
  m.def("cosine_similarity_loss_bwd(Tensor grad_loss, Tensor a, Tensor b, Tensor? mask, Tensor denom, float eps,"
        " str reduction) -> (Tensor grad_a, Tensor grad_b)");

  m.def("sigmoid_gate(Tensor x, Tensor gate_logits) -> Tensor");
  m.def("sigmoid_gate_bwd(Tensor grad_out, Tensor x, Tensor gate_logits) -> (Tensor grad_x, Tensor grad_gate)");
}

TORCH_LIBRARY_IMPL(xtc_ext, CompositeImplicitAutograd, m) {
  m.impl("masked_cross_entropy", &masked_cross_entropy);
  m.impl("masked_l1_loss", &masked_l1_loss);
  m.impl("soft_cross_entropy", &soft_cross_entropy);
  m.impl("cosine_similarity_loss", &cosine_similarity_loss);
}

}  // namespace xtc
