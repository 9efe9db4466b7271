// The xtc_ext operator library: schemas of every op, and the public ops as CompositeImplicitAutograd
// wrappers around the internal *_fwd kernels (whose autograd and double backward are registered from
// Python in xtc_ext/ops.py). Device kernels live in one file per op, the Meta (fake-tensor) kernels in
// meta.cpp; all of them validate their arguments with the op's function in checks.h.
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

// PyTorch broadcasting of a and b (cosine_similarity broadcasts its operands); ValueError naming b.
c10::SymDimVector broadcast_shape(const Tensor& a, const Tensor& b) {
  const int64_t rank = std::max(a.dim(), b.dim());
  c10::SymDimVector shape(rank, c10::SymInt(1));
  for (int64_t i = 0; i < rank; ++i) {
    const c10::SymInt sa = i < a.dim() ? a.sym_size(a.dim() - 1 - i) : c10::SymInt(1);
    const c10::SymInt sb = i < b.dim() ? b.sym_size(b.dim() - 1 - i) : c10::SymInt(1);
    TORCH_CHECK_VALUE(sa == sb || sa == 1 || sb == 1, "cosine_similarity_loss: b must have the shape of a ",
                      a.sym_sizes(), " or broadcast with it, got ", b.sym_sizes());
    shape[rank - 1 - i] = sa == 1 ? sb : sa;
  }
  return shape;
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
  return std::get<0>(fwd.call(pred, target, mask, invalid_value, reduction));
}

Tensor soft_cross_entropy(const Tensor& logits, const Tensor& target_logits, const OptTensor& mask,
                          c10::string_view reduction) {
  static auto fwd = find_op<Tensor3(const Tensor&, const Tensor&, const OptTensor&, c10::string_view)>(
      "xtc_ext::soft_cross_entropy_fwd");
  return std::get<0>(fwd.call(logits, target_logits, mask, reduction));
}

Tensor cosine_similarity_loss(const Tensor& a, const Tensor& b, const OptTensor& mask, double eps,
                              c10::string_view reduction, int64_t dim) {
  static auto fwd =
      find_op<Tensor2(const Tensor&, const Tensor&, const OptTensor&, double, c10::string_view, int64_t)>(
          "xtc_ext::cosine_similarity_loss_fwd");
  if (a.sym_sizes() == b.sym_sizes()) return std::get<0>(fwd.call(a, b, mask, eps, reduction, dim));
  const c10::SymDimVector shape = broadcast_shape(a, b);
  return std::get<0>(fwd.call(a.expand_symint(shape), b.expand_symint(shape), mask, eps, reduction, dim));
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

  m.def("cosine_similarity_loss(Tensor a, Tensor b, Tensor? mask=None, float eps=1e-8, str reduction=\"mean\","
        " int dim=1) -> Tensor");
  m.def("cosine_similarity_loss_fwd(Tensor a, Tensor b, Tensor? mask, float eps, str reduction, int dim)"
        " -> (Tensor loss, Tensor denom)");
  m.def("cosine_similarity_loss_bwd(Tensor grad_loss, Tensor a, Tensor b, Tensor? mask, Tensor denom, float eps,"
        " str reduction, int dim) -> (Tensor grad_a, Tensor grad_b)");

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
