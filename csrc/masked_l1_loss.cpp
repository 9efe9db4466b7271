// masked_l1_loss: CPU kernels. Element (n,c,h,w) is valid when mask[n,h,w] (if given) and
// target != invalid_value (if given); the mean runs over valid elements.
#include "common.h"
#include "op_table.h"

#if XTC_WITH_CUDA
#include "cuda_glue.h"
#endif

namespace xtc {
namespace {

// Argument validation: the one check of every kernel of this op (CPU, Meta, CUDA); checks.h.
LossInfo check_masked_l1_loss(const at::Tensor& pred, const at::Tensor& target, const OptTensor& mask,
                              std::optional<double> invalid_value, std::string_view reduction) {
  constexpr const char* op = "masked_l1_loss";
  check_float(pred, op, "pred");
  LossInfo info{parse_reduction(reduction, op), make_layout(pred, default_cdim(pred), op, "pred", false), {}};
  check_same(target, pred, op, "target", "pred");
  check_mask(mask, info.layout, pred, op, "pred");
  TORCH_CHECK_VALUE(!invalid_value || !std::isnan(*invalid_value), op,
                    ": invalid_value must not be NaN (NaN equals no target; exclude NaN targets with mask=)");
  info.none_shape = c10::SymDimVector(pred.sym_sizes().begin(), pred.sym_sizes().end());
  return info;
}


constexpr const char* kOp = "masked_l1_loss";

// Calls body(block, c, flat offset of the row, pred row, target row, valid[L] as 0/1) for every
// channel row of every pixel block.
template <typename scalar_t, typename acc_t, typename Body>
void for_each_row(const Layout& layout, const at::Tensor& pred, const at::Tensor& target,
                  const std::optional<at::Tensor>& mask, std::optional<double> invalid_value, const Body& body) {
  const int64_t N = layout.n(), C = layout.c(), HW = layout.p();
  const scalar_t* p = pred.const_data_ptr<scalar_t>();
  const scalar_t* t = target.const_data_ptr<scalar_t>();
  const bool* mk = mask ? mask->const_data_ptr<bool>() : nullptr;
  const scalar_t invalid = static_cast<scalar_t>(invalid_value.value_or(0.0));
  for_each_pixel_block(N, HW, [&](const PixelBlock& b) {
    acc_t valid[kPixelBlock];
    for (int64_t c = 0; c < C; ++c) {
      const int64_t off = (b.n * C + c) * HW + b.begin;
      for (int64_t i = 0; i < b.size(); ++i) {
        const bool ok = (!mk || mk[b.n * HW + b.begin + i]) && (!invalid_value || t[off + i] != invalid);
        valid[i] = ok ? acc_t(1) : acc_t(0);
      }
      body(b, c, off, p + off, t + off, valid);
    }
  });
}

// loss[i] = |p[i] - t[i]| where valid, else 0 (a select: NaN/inf in invalid elements never leaks)
template <typename scalar_t, typename acc_t>
inline void row_l1(const scalar_t* __restrict p, const scalar_t* __restrict t, const acc_t* __restrict valid,
                   acc_t* __restrict loss, int64_t L) {
  for (int64_t i = 0; i < L; ++i) {
    const acc_t d = std::abs(static_cast<acc_t>(p[i]) - static_cast<acc_t>(t[i]));
    loss[i] = valid[i] != acc_t(0) ? d : acc_t(0);
  }
}

// g[i] = s[i] * sign(p[i] - t[i]) where valid (sign(0) = 0), else 0
template <typename scalar_t, typename acc_t>
inline void row_l1_grad(const scalar_t* __restrict p, const scalar_t* __restrict t, const acc_t* __restrict valid,
                        const acc_t* __restrict s, scalar_t* __restrict g, int64_t L) {
  for (int64_t i = 0; i < L; ++i) {
    const acc_t d = static_cast<acc_t>(p[i]) - static_cast<acc_t>(t[i]);
    const acc_t sign = d > 0 ? acc_t(1) : (d < 0 ? acc_t(-1) : acc_t(0));
    g[i] = static_cast<scalar_t>(valid[i] != acc_t(0) ? s[i] * sign : acc_t(0));
  }
}

}  // namespace

// CPU kernels (registered by ops.cpp from the op table).
namespace cpu {

std::tuple<at::Tensor, at::Tensor> masked_l1_loss_fwd(const at::Tensor& pred_in, const at::Tensor& target_in,
                                                      const std::optional<at::Tensor>& mask_in,
                                                      std::optional<double> invalid_value, c10::string_view reduction) {
  const LossInfo info = check_masked_l1_loss(pred_in, target_in, mask_in, invalid_value, reduction);
  const Reduction red = info.red;
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const auto opts = pred.options().dtype(loss_dtype(pred));
  at::Tensor loss = red == Reduction::None ? at::empty_symint(info.none_shape, opts) : at::empty({}, opts);
  at::Tensor denom = at::empty({}, opts);
  const int64_t C = info.layout.c();
  std::vector<double> part_loss(num_pixel_blocks(info.layout.n(), info.layout.p()) * C);
  std::vector<double> part_count(part_loss.size());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "masked_l1_loss_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* loss_el = red == Reduction::None ? loss.data_ptr<acc_t>() : nullptr;
    for_each_row<scalar_t, acc_t>(
        info.layout, pred, target, mask, invalid_value,
        [&](const PixelBlock& b, int64_t c, int64_t off, const scalar_t* p, const scalar_t* t, const acc_t* valid) {
          acc_t l[kPixelBlock];
          row_l1(p, t, valid, l, b.size());
          acc_t sum = 0, count = 0;
          for (int64_t i = 0; i < b.size(); ++i) {
            sum += l[i];
            count += valid[i];
          }
          if (loss_el) row_store(l, loss_el + off, b.size());
          part_loss[b.index * C + c] = sum;
          part_count[b.index * C + c] = count;
        });
  });
  finish_reduction(red, ordered_sum(part_loss), ordered_sum(part_count), loss, denom);
  return {loss, denom};
}

at::Tensor masked_l1_loss_bwd(const at::Tensor& grad_loss_in, const at::Tensor& pred_in, const at::Tensor& target_in,
                              const std::optional<at::Tensor>& mask_in, const at::Tensor& denom,
                              std::optional<double> invalid_value, c10::string_view reduction) {
  const LossInfo info = check_masked_l1_loss(pred_in, target_in, mask_in, invalid_value, reduction);
  check_loss_backward(info, kOp, pred_in, grad_loss_in, denom, nullptr);
  const Reduction red = info.red;
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const GradLoss grad_loss = prepare_grad_loss(grad_loss_in, pred, red);
  at::Tensor grad = at::empty_like(pred, at::MemoryFormat::Contiguous);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "masked_l1_loss_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const GradScale<acc_t> scale(grad_loss, denom, red);
    scalar_t* g = grad.data_ptr<scalar_t>();
    for_each_row<scalar_t, acc_t>(
        info.layout, pred, target, mask, invalid_value,
        [&](const PixelBlock& b, int64_t c, int64_t off, const scalar_t* p, const scalar_t* t, const acc_t* valid) {
          acc_t s[kPixelBlock];
          scale.fill(off, s, b.size());
          row_l1_grad(p, t, valid, s, g + off, b.size());
        });
  });
  return grad;
}

}  // namespace cpu

// Meta (fake-tensor) kernels: the same check, outputs of the real kernels' shapes, dtypes and strides.
namespace meta {

Tensor2 masked_l1_loss_fwd(const Tensor& pred, const Tensor& target, const OptTensor& mask,
                           std::optional<double> invalid_value, c10::string_view reduction) {
  return loss_outputs(check_masked_l1_loss(pred, target, mask, invalid_value, reduction), pred);
}

Tensor masked_l1_loss_bwd(const Tensor& grad_loss, const Tensor& pred, const Tensor& target, const OptTensor& mask,
                          const Tensor& denom, std::optional<double> invalid_value, c10::string_view reduction) {
  const LossInfo info = check_masked_l1_loss(pred, target, mask, invalid_value, reduction);
  check_loss_backward(info, "masked_l1_loss", pred, grad_loss, denom, nullptr);
  return at::empty_like(pred, at::MemoryFormat::Contiguous);
}

}  // namespace meta

// The public op: CompositeImplicitAutograd around masked_l1_loss_fwd (whose autograd is registered from Python).
namespace composite {
namespace {

}  // namespace

Tensor masked_l1_loss(const Tensor& pred, const Tensor& target, const OptTensor& mask,
                      std::optional<double> invalid_value, c10::string_view reduction) {
  static auto fwd = XTC_KERNEL_OP(masked_l1_loss_fwd);
  return std::get<0>(fwd.call(pred, target, mask, invalid_value, reduction));
}

}  // namespace composite

#if XTC_WITH_CUDA
// CUDA entry points: the glue around the launchers of masked_l1_loss.cu (cuda_glue.h).
namespace gpu {

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

}  // namespace gpu
#endif  // XTC_WITH_CUDA

}  // namespace xtc
