// masked_cross_entropy: CPU kernels. The forward saves log_norm - max per pixel (bounded by log C, so exact to
// fp32 rounding even for huge logits); the backward recomputes the max and the softmax from it.
#include "common.h"
#include "op_table.h"

#if XTC_WITH_CUDA
#include "cuda_glue.h"
#endif

#include <atomic>

namespace xtc {
namespace {

// Argument validation: the one check of every kernel of this op (CPU, Meta, CUDA); checks.h.
LossInfo check_masked_cross_entropy(const at::Tensor& logits, const at::Tensor& target, const OptTensor& weight,
                                    int64_t ignore_index, double label_smoothing, std::string_view reduction) {
  constexpr const char* op = "masked_cross_entropy";
  check_float(logits, op, "logits");
  LossInfo info{parse_reduction(reduction, op), make_layout(logits, default_cdim(logits), op, "logits", true), {}};
  check_pixel_shape(target, info.layout, logits, op, "target", "logits");
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong || target.scalar_type() == at::kByte, op,
                   ": target must be int64 or uint8 class indices, got ", target.scalar_type());
  if (weight) {
    check_device(*weight, logits, op, "weight", "logits");
    check_float(*weight, op, "weight");
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->sym_size(0) == info.layout.C, op, ": weight must have shape [C] = [",
                      info.layout.C, "], got ", weight->sym_sizes());
  }
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, op, ": label_smoothing must be in [0, 1], got ",
                    label_smoothing);
  info.none_shape = info.layout.pixel_shape;
  return info;
}


constexpr const char* kOp = "masked_cross_entropy";

// Calls f with a value of the target's index type (int64 or uint8): no conversion copy of the labels.
template <typename F>
void dispatch_target(const at::Tensor& target, const F& f) {
  if (target.scalar_type() == at::kLong) {
    f(int64_t{});
  } else {
    f(uint8_t{});
  }
}

template <typename index_t>
bool is_ignored(index_t t, int64_t ignore_index) {
  return static_cast<int64_t>(t) == ignore_index;
}

// Class weights (in the loss dtype) and label smoothing of one call.
template <typename acc_t>
struct ClassTerms {
  const acc_t* weight;  // [C] or nullptr (all ones)
  acc_t total_weight;   // W
  acc_t eps;            // label smoothing
  int64_t C;

  acc_t w(int64_t c) const { return weight ? weight[c] : acc_t(1); }
};

// Class weights in the loss dtype, contiguous (undefined without weights); validated by the op's check.
at::Tensor prepare_weight(const std::optional<at::Tensor>& weight, const at::Tensor& logits) {
  return weight ? weight->to(loss_dtype(logits)).contiguous() : at::Tensor();
}

template <typename acc_t>
ClassTerms<acc_t> class_terms(const at::Tensor& weight, int64_t C, double label_smoothing) {
  const acc_t* w = weight.defined() ? weight.const_data_ptr<acc_t>() : nullptr;
  acc_t total = 0;
  for (int64_t c = 0; c < C; ++c) total += w ? w[c] : acc_t(1);
  return {w, total, static_cast<acc_t>(label_smoothing), C};
}

// gap[i] += w * (m[i] - z[i]): the label-smoothing sum, every term >= 0 (no cancellation).
template <typename scalar_t, typename acc_t>
inline void row_weighted_gap(const scalar_t* __restrict z, const acc_t* __restrict m, acc_t w, acc_t* __restrict gap,
                             int64_t L) {
  for (int64_t i = 0; i < L; ++i) gap[i] += w * (m[i] - static_cast<acc_t>(z[i]));
}

// g[i] = a[i] * exp((z[i] - m[i]) - log_norm[i]) - b[i]: one class row of the gradient; exactly 0 where the
// pixel's scale s[i] is 0 (ignored pixels: NaN or inf logits there never leak into the gradient).
template <typename scalar_t, typename acc_t>
inline void row_grad(const scalar_t* __restrict z, const acc_t* __restrict m, const acc_t* __restrict log_norm,
                     const acc_t* __restrict a, const acc_t* __restrict b, const acc_t* __restrict s,
                     scalar_t* __restrict g, int64_t L) {
  for (int64_t i = 0; i < L; ++i) {
    const acc_t v = a[i] * vexp((static_cast<acc_t>(z[i]) - m[i]) - log_norm[i]) - b[i];
    g[i] = static_cast<scalar_t>(s[i] != acc_t(0) ? v : acc_t(0));
  }
}

}  // namespace

// CPU kernels (registered by ops.cpp from the op table).
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_cross_entropy_fwd(const at::Tensor& logits_in, const at::Tensor& target_in,
                                                                        const std::optional<at::Tensor>& weight_in,
                                                                        int64_t ignore_index, double label_smoothing,
                                                                        c10::string_view reduction) {
  const LossInfo info =
      check_masked_cross_entropy(logits_in, target_in, weight_in, ignore_index, label_smoothing, reduction);
  const Reduction red = info.red;
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor weight = prepare_weight(weight_in, logits);
  const int64_t N = info.layout.n(), C = info.layout.c(), HW = info.layout.p();
  const auto opts = logits.options().dtype(loss_dtype(logits));
  at::Tensor log_norm = at::empty_symint(info.layout.pixel_shape, opts);
  at::Tensor loss = red == Reduction::None ? at::empty_like(log_norm) : at::empty({}, opts);
  at::Tensor denom = at::empty({}, opts);
  std::vector<double> part_loss(num_pixel_blocks(N, HW)), part_denom(part_loss.size());
  // Any int64 value can be a label (INT64_MIN included), so a flag says whether bad_label is set.
  std::atomic<bool> has_bad_label{false};
  std::atomic<int64_t> bad_label{0};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "masked_cross_entropy_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const ClassTerms<acc_t> ct = class_terms<acc_t>(weight, C, label_smoothing);
    const acc_t eps_c = ct.eps / static_cast<acc_t>(C);
    dispatch_target(target, [&](auto tag) {
      using index_t = decltype(tag);
      const scalar_t* z = logits.const_data_ptr<scalar_t>();
      const index_t* y = target.const_data_ptr<index_t>();
      acc_t* log_norm_p = log_norm.data_ptr<acc_t>();
      acc_t* loss_px = red == Reduction::None ? loss.data_ptr<acc_t>() : nullptr;
      for_each_pixel_block(N, HW, [&](const PixelBlock& b) {
        const int64_t px = b.n * HW + b.begin, L = b.size();
        const scalar_t* zb = z + b.n * C * HW + b.begin;
        const acc_t* ln = log_norm_p + px;
        acc_t m[kPixelBlock], gap[kPixelBlock];
        block_log_norm(zb, C, HW, L, m, log_norm_p + px);
        if (ct.eps > 0) {
          for (int64_t i = 0; i < L; ++i) gap[i] = 0;
          for (int64_t c = 0; c < C; ++c) row_weighted_gap(zb + c * HW, m, ct.w(c), gap, L);
        }
        acc_t sum = 0, den = 0;
        for (int64_t i = 0; i < L; ++i) {
          const index_t t = y[px + i];
          acc_t l = 0;
          if (!is_ignored(t, ignore_index)) {
            const int64_t k = static_cast<int64_t>(t);
            if (k < 0 || k >= C) {
              bad_label.store(k);
              has_bad_label.store(true);
            } else {
              const acc_t wy = ct.w(k);
              l = (1 - ct.eps) * wy * (ln[i] + (m[i] - static_cast<acc_t>(zb[k * HW + i])));
              if (ct.eps > 0) l += eps_c * (ct.total_weight * ln[i] + gap[i]);
              den += wy;
            }
          }
          sum += l;
          if (loss_px) loss_px[px + i] = l;
        }
        part_loss[b.index] = sum;
        part_denom[b.index] = den;
      });
    });
  });
  TORCH_CHECK_VALUE(!has_bad_label.load(), kOp, ": target contains class index ", bad_label.load(),
                    ", outside [0, ", C, ") and not ignore_index (", ignore_index, ")");
  finish_reduction(red, ordered_sum(part_loss), ordered_sum(part_denom), loss, denom);
  return {loss, log_norm, denom};
}

at::Tensor masked_cross_entropy_bwd(const at::Tensor& grad_loss_in, const at::Tensor& logits_in, const at::Tensor& target_in,
                                    const std::optional<at::Tensor>& weight_in, const at::Tensor& log_norm_in,
                                    const at::Tensor& denom, int64_t ignore_index, double label_smoothing,
                                    c10::string_view reduction) {
  const LossInfo info =
      check_masked_cross_entropy(logits_in, target_in, weight_in, ignore_index, label_smoothing, reduction);
  check_loss_backward(info, kOp, logits_in, grad_loss_in, denom, &log_norm_in);
  const Reduction red = info.red;
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor weight = prepare_weight(weight_in, logits);
  const at::Tensor log_norm = log_norm_in.to(loss_dtype(logits)).contiguous();
  const GradLoss grad_loss = prepare_grad_loss(grad_loss_in, logits, red);
  const int64_t N = info.layout.n(), C = info.layout.c(), HW = info.layout.p();
  at::Tensor grad = at::empty_like(logits, at::MemoryFormat::Contiguous);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "masked_cross_entropy_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const ClassTerms<acc_t> ct = class_terms<acc_t>(weight, C, label_smoothing);
    const acc_t eps_c = ct.eps / static_cast<acc_t>(C);
    // Without smoothing the smoothing terms are left out, not multiplied by 0: an inf or NaN weight of
    // a class that no pixel has then cannot turn every gradient into NaN.
    const acc_t smooth_total = ct.eps > 0 ? eps_c * ct.total_weight : acc_t(0);
    dispatch_target(target, [&](auto tag) {
      using index_t = decltype(tag);
      const scalar_t* z = logits.const_data_ptr<scalar_t>();
      const index_t* y = target.const_data_ptr<index_t>();
      const acc_t* log_norm_p = log_norm.const_data_ptr<acc_t>();
      scalar_t* g = grad.data_ptr<scalar_t>();
      const GradScale<acc_t> scale(grad_loss, denom, red);
      for_each_pixel_block(N, HW, [&](const PixelBlock& b) {
        const int64_t px = b.n * HW + b.begin, L = b.size();
        const scalar_t* zb = z + b.n * C * HW + b.begin;
        const acc_t* ln = log_norm_p + px;
        scalar_t* gb = g + b.n * C * HW + b.begin;
        acc_t m[kPixelBlock], s[kPixelBlock], a[kPixelBlock], bias[kPixelBlock], sb[kPixelBlock];
        block_max(zb, C, HW, L, m);
        scale.fill(px, s, L);
        for (int64_t i = 0; i < L; ++i) {
          const int64_t k = static_cast<int64_t>(y[px + i]);
          if (is_ignored(y[px + i], ignore_index) || k < 0 || k >= C) s[i] = 0;
          a[i] = s[i] == 0 ? acc_t(0) : s[i] * ((1 - ct.eps) * ct.w(k) + smooth_total);
          sb[i] = s[i] * eps_c;
        }
        for (int64_t i = 0; i < L; ++i) bias[i] = 0;
        for (int64_t c = 0; c < C; ++c) {
          const acc_t wc = ct.w(c);
          if (ct.eps > 0) {
            for (int64_t i = 0; i < L; ++i) bias[i] = sb[i] * wc;
          }
          row_grad(zb + c * HW, m, ln, a, bias, s, gb + c * HW, L);
        }
        for (int64_t i = 0; i < L; ++i) {
          if (s[i] == acc_t(0)) continue;
          const int64_t k = static_cast<int64_t>(y[px + i]);
          const acc_t pk = vexp((static_cast<acc_t>(zb[k * HW + i]) - m[i]) - ln[i]);
          const acc_t smooth_k = ct.eps > 0 ? sb[i] * ct.w(k) : acc_t(0);
          gb[k * HW + i] = static_cast<scalar_t>(a[i] * pk - smooth_k - s[i] * (1 - ct.eps) * ct.w(k));
        }
      });
    });
  });
  return grad;
}

}  // namespace cpu

// Meta (fake-tensor) kernels: the same check, outputs of the real kernels' shapes, dtypes and strides.
namespace meta {

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
  return at::empty_like(logits, at::MemoryFormat::Contiguous);
}

}  // namespace meta

// The public op: CompositeImplicitAutograd around masked_cross_entropy_fwd (whose autograd is registered from Python).
namespace composite {
namespace {

}  // namespace

Tensor masked_cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index, const OptTensor& weight,
                            double label_smoothing, c10::string_view reduction) {
  static auto fwd = XTC_KERNEL_OP(masked_cross_entropy_fwd);
  return std::get<0>(fwd.call(logits, target, weight, ignore_index, label_smoothing, reduction));
}

}  // namespace composite

#if XTC_WITH_CUDA
// CUDA entry points: the glue around the launchers of masked_cross_entropy.cu (cuda_glue.h).
namespace gpu {

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

}  // namespace gpu
#endif  // XTC_WITH_CUDA

}  // namespace xtc
