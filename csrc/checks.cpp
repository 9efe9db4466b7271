// The argument-validation helpers of the ops' check functions (declared and documented in checks.h).
#include "checks.h"

#include <c10/core/WrapDimMinimal.h>

#include <cmath>

namespace xtc {

namespace {

constexpr const char* kFloatTypes = "float16, bfloat16, float32 or float64";

bool is_supported_float(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

}  // namespace

void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": ", name, " must be ", kFloatTypes, ", got ",
                   t.scalar_type());
}

void check_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                  const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device(), " (all tensors must be on one device)");
}

void check_same(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name, const char* ref_name) {
  check_device(t, ref, op, name, ref_name);
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ", ref_name, " (",
                   ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sym_sizes() == ref.sym_sizes(), op, ": ", name, " must have the shape of ", ref_name, " ",
                    ref.sym_sizes(), ", got ", t.sym_sizes());
}

Layout make_layout(const at::Tensor& x, int64_t cdim, const char* op, const char* name, bool need_class) {
  Layout l;
  l.N = 1;
  l.C = 1;
  l.P = 1;
  const auto sizes = x.sym_sizes();
  const int64_t rank = x.dim();
  TORCH_CHECK_VALUE(rank >= 1 || !need_class, op, ": ", name,
                    " must have a class dimension: shape (C,), (N, C) or (N, C, d1, ..., dk), got a 0-D tensor");
  if (rank == 0) return l;
  l.cdim = cdim;
  for (int64_t d = 0; d < rank; ++d) {
    if (d < cdim) l.N = l.N * sizes[d];
    if (d > cdim) l.P = l.P * sizes[d];
    if (d != cdim) l.pixel_shape.push_back(sizes[d]);
  }
  l.C = sizes[cdim];
  TORCH_CHECK_VALUE(!need_class || l.C >= 1, op, ": ", name, " must have at least one class/channel (size of dim ",
                    cdim, " >= 1), got shape ", sizes);
  return l;
}

int64_t default_cdim(const at::Tensor& x) { return x.dim() >= 2 ? 1 : 0; }

namespace {

std::string pixel_forms(const Layout& l, bool with_class_form) {
  std::ostringstream s;
  s << l.pixel_shape;
  if (with_class_form && !l.pixel_shape.empty()) {
    c10::SymDimVector keep(l.pixel_shape.begin(), l.pixel_shape.end());
    keep.insert(keep.begin() + l.cdim, c10::SymInt(1));
    s << " or " << c10::SymIntArrayRef(keep);
  }
  return s.str();
}

}  // namespace

void check_pixel_shape(const at::Tensor& t, const Layout& l, const at::Tensor& ref, const char* op, const char* name,
                       const char* ref_name) {
  check_device(t, ref, op, name, ref_name);
  TORCH_CHECK_VALUE(t.sym_sizes() == c10::SymIntArrayRef(l.pixel_shape), op, ": ", name, " must have shape ",
                    pixel_forms(l, false), " (", ref_name, "'s shape without dim ", l.cdim, "), got ", t.sym_sizes());
}

void check_mask(const OptTensor& mask, const Layout& l, const at::Tensor& ref, const char* op, const char* ref_name) {
  if (!mask) return;
  const at::Tensor& m = *mask;
  check_device(m, ref, op, "mask", ref_name);
  const auto t = m.scalar_type();
  TORCH_CHECK_TYPE(t == at::kBool || at::isIntegralType(t, false) || is_supported_float(t), op,
                   ": mask must be bool, an integer type or ", kFloatTypes, " (nonzero = valid), got ", t);
  bool ok = m.sym_sizes() == c10::SymIntArrayRef(l.pixel_shape);
  if (!ok && m.dim() == static_cast<int64_t>(l.pixel_shape.size()) + 1 && !l.pixel_shape.empty()) {
    ok = m.sym_size(l.cdim) == 1;
    for (int64_t d = 0, k = 0; ok && d < m.dim(); ++d) {
      if (d != l.cdim) ok = m.sym_size(d) == l.pixel_shape[k++];
    }
  }
  TORCH_CHECK_VALUE(ok, op, ": mask must have shape ", pixel_forms(l, true), ", got ", m.sym_sizes());
}

namespace {

void check_denominator_like(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  check_device(t, ref, op, name, "the input");
  check_float(t, op, name);
  TORCH_CHECK_VALUE(t.dim() == 0, op, ": ", name, " must be a 0-D tensor, got shape ", t.sym_sizes());
}

}  // namespace

Reduction parse_reduction(std::string_view reduction, const char* op) {
  if (reduction == "mean") return Reduction::Mean;
  if (reduction == "sum") return Reduction::Sum;
  if (reduction == "none") return Reduction::None;
  TORCH_CHECK_VALUE(false, op, ": reduction must be 'none', 'mean' or 'sum', got '", reduction, "'");
}

void check_loss_backward(const LossInfo& info, const char* op, const at::Tensor& input, const at::Tensor& grad_loss,
                         const at::Tensor& denom, const at::Tensor* saved_per_pixel) {
  check_device(grad_loss, input, op, "grad_loss", "the input");
  check_float(grad_loss, op, "grad_loss");
  if (info.red == Reduction::None) {
    TORCH_CHECK_VALUE(grad_loss.sym_sizes() == c10::SymIntArrayRef(info.none_shape), op, ": grad_loss must have shape ",
                      c10::SymIntArrayRef(info.none_shape), " (the reduction='none' loss), got ", grad_loss.sym_sizes());
  } else {
    TORCH_CHECK_VALUE(grad_loss.dim() == 0, op, ": grad_loss must be a 0-D tensor, got shape ", grad_loss.sym_sizes());
  }
  check_denominator_like(denom, input, op, "denom");
  if (saved_per_pixel) {
    check_float(*saved_per_pixel, op, "lse_minus_max");
    check_pixel_shape(*saved_per_pixel, info.layout, input, op, "lse_minus_max", "logits");
  }
}

Tensor2 loss_outputs(const LossInfo& info, const at::Tensor& input) {
  const auto opts = input.options().dtype(loss_dtype(input));
  at::Tensor loss = info.red == Reduction::None ? at::empty_symint(info.none_shape, opts) : at::empty({}, opts);
  return {loss, at::empty({}, opts)};
}

Tensor3 ce_outputs(const LossInfo& info, const at::Tensor& logits) {
  auto [loss, denom] = loss_outputs(info, logits);
  at::Tensor lse = at::empty_symint(info.layout.pixel_shape, logits.options().dtype(loss_dtype(logits)));
  return {loss, lse, denom};
}

OptTensor kernel_mask(const OptTensor& mask) {
  if (!mask) return std::nullopt;
  const at::Tensor m = mask->scalar_type() == at::kBool ? *mask : mask->ne(0);
  return m.contiguous();
}

at::Tensor dense_like(const at::Tensor& t, const at::Tensor& like) {
  if (t.is_non_overlapping_and_dense() && t.strides() == like.strides()) return t;
  return at::empty_like(like).copy_(t);
}

bool is_broadcast_scalar(const at::Tensor& t) {
  if (t.dim() == 0 || t.numel() == 0) return false;
  for (int64_t s : t.strides()) {
    if (s != 0) return false;
  }
  return true;
}

}  // namespace xtc
