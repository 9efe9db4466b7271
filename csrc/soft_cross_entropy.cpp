// soft_cross_entropy: CPU kernels for -sum_c softmax(target_logits)_c * log_softmax(logits)_c per pixel
// (XTasC-Net Eq. 13). Forward saves log_norm - max of the logits per pixel (bounded by log C, so exact to
// fp32 rounding); the backward recomputes both maxima and the target softmax.
#include "common.h"
#include "op_table.h"

#if XTC_WITH_CUDA
#include "cuda_glue.h"
#endif

namespace xtc {
namespace {

// Argument validation: the one check of every kernel of this op (CPU, Meta, CUDA); checks.h.
LossInfo check_soft_cross_entropy(const at::Tensor& logits, const at::Tensor& target_logits, const OptTensor& mask,
                                  std::string_view reduction) {
  constexpr const char* op = "soft_cross_entropy";
  check_float(logits, op, "logits");
  LossInfo info{parse_reduction(reduction, op), make_layout(logits, default_cdim(logits), op, "logits", true), {}};
  check_same(target_logits, logits, op, "target_logits", "logits");
  check_mask(mask, info.layout, logits, op, "logits");
  info.none_shape = info.layout.pixel_shape;
  return info;
}


constexpr const char* kOp = "soft_cross_entropy";

// One class row of the forward: sz += exp(z - mz), st += exp(t - mt), cross += exp(t - mt) * (mz - z).
template <typename scalar_t, typename acc_t>
inline void row_soft_ce(const scalar_t* __restrict z, const scalar_t* __restrict t, const acc_t* __restrict mz,
                        const acc_t* __restrict mt, acc_t* __restrict sz, acc_t* __restrict st,
                        acc_t* __restrict cross, int64_t L) {
  for (int64_t i = 0; i < L; ++i) {
    const acc_t zc = static_cast<acc_t>(z[i]);
    const acc_t et = vexp(static_cast<acc_t>(t[i]) - mt[i]);
    sz[i] += vexp(zc - mz[i]);
    st[i] += et;
    cross[i] += et * (mz[i] - zc);
  }
}

}  // namespace

// CPU kernels (registered by ops.cpp from the op table).
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_cross_entropy_fwd(const at::Tensor& logits_in, const at::Tensor& target_in,
                                                                      const std::optional<at::Tensor>& mask_in,
                                                                      c10::string_view reduction) {
  const LossInfo info = check_soft_cross_entropy(logits_in, target_in, mask_in, reduction);
  const Reduction red = info.red;
  const at::Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const int64_t N = info.layout.n(), C = info.layout.c(), HW = info.layout.p();
  const auto opts = logits.options().dtype(loss_dtype(logits));
  at::Tensor log_norm = at::empty_symint(info.layout.pixel_shape, opts);
  at::Tensor loss = red == Reduction::None ? at::empty_like(log_norm) : at::empty({}, opts);
  at::Tensor denom = at::empty({}, opts);
  std::vector<double> part_loss(num_pixel_blocks(N, HW)), part_count(part_loss.size());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "soft_cross_entropy_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    const bool* mk = mask ? mask->const_data_ptr<bool>() : nullptr;
    acc_t* log_norm_p = log_norm.data_ptr<acc_t>();
    acc_t* loss_px = red == Reduction::None ? loss.data_ptr<acc_t>() : nullptr;
    for_each_pixel_block(N, HW, [&](const PixelBlock& b) {
      const int64_t px = b.n * HW + b.begin, L = b.size();
      const scalar_t* zb = z + b.n * C * HW + b.begin;
      const scalar_t* tb = t + b.n * C * HW + b.begin;
      acc_t mz[kPixelBlock], mt[kPixelBlock], sz[kPixelBlock], st[kPixelBlock], cross[kPixelBlock];
      block_max(zb, C, HW, L, mz);
      block_max(tb, C, HW, L, mt);
      for (int64_t i = 0; i < L; ++i) sz[i] = st[i] = cross[i] = 0;
      // loss = log(sz) + sum_c q_c (mz - z_c): every term >= 0, so no cancellation for large logits.
      for (int64_t c = 0; c < C; ++c) row_soft_ce(zb + c * HW, tb + c * HW, mz, mt, sz, st, cross, L);
      acc_t sum = 0, count = 0;
      for (int64_t i = 0; i < L; ++i) {
        const acc_t log_sz = std::log(sz[i]);
        log_norm_p[px + i] = log_sz;
        const bool valid = !mk || mk[px + i];
        const acc_t l = valid ? log_sz + cross[i] / st[i] : acc_t(0);
        sum += l;
        count += valid ? acc_t(1) : acc_t(0);
        if (loss_px) loss_px[px + i] = l;
      }
      part_loss[b.index] = sum;
      part_count[b.index] = count;
    });
  });
  finish_reduction(red, ordered_sum(part_loss), ordered_sum(part_count), loss, denom);
  return {loss, log_norm, denom};
}

at::Tensor soft_cross_entropy_bwd(const at::Tensor& grad_loss_in, const at::Tensor& logits_in, const at::Tensor& target_in,
                                  const std::optional<at::Tensor>& mask_in, const at::Tensor& log_norm_in, const at::Tensor& denom,
                                  c10::string_view reduction) {
  const LossInfo info = check_soft_cross_entropy(logits_in, target_in, mask_in, reduction);
  check_loss_backward(info, kOp, logits_in, grad_loss_in, denom, &log_norm_in);
  const Reduction red = info.red;
  const at::Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const at::Tensor log_norm = log_norm_in.to(loss_dtype(logits)).contiguous();
  const GradLoss grad_loss = prepare_grad_loss(grad_loss_in, logits, red);
  const int64_t N = info.layout.n(), C = info.layout.c(), HW = info.layout.p();
  at::Tensor grad = at::empty_like(logits, at::MemoryFormat::Contiguous);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "soft_cross_entropy_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    const bool* mk = mask ? mask->const_data_ptr<bool>() : nullptr;
    const acc_t* log_norm_p = log_norm.const_data_ptr<acc_t>();
    scalar_t* g = grad.data_ptr<scalar_t>();
    const GradScale<acc_t> scale(grad_loss, denom, red);
    for_each_pixel_block(N, HW, [&](const PixelBlock& b) {
      const int64_t px = b.n * HW + b.begin, L = b.size();
      const scalar_t* zb = z + b.n * C * HW + b.begin;
      const scalar_t* tb = t + b.n * C * HW + b.begin;
      acc_t mz[kPixelBlock], mt[kPixelBlock], log_st[kPixelBlock], s[kPixelBlock], p[kPixelBlock], q[kPixelBlock];
      block_max(zb, C, HW, L, mz);
      block_log_norm(tb, C, HW, L, mt, log_st);
      scale.fill(px, s, L);
      if (mk) {
        for (int64_t i = 0; i < L; ++i) s[i] = mk[px + i] ? s[i] : acc_t(0);
      }
      for (int64_t c = 0; c < C; ++c) {
        row_softmax(zb + c * HW, mz, log_norm_p + px, p, L);
        row_softmax(tb + c * HW, mt, log_st, q, L);
        row_scaled_diff(p, q, s, g + (b.n * C + c) * HW + b.begin, L);
      }
    });
  });
  return grad;
}

}  // namespace cpu

// Meta (fake-tensor) kernels: the same check, outputs of the real kernels' shapes, dtypes and strides.
namespace meta {

Tensor3 soft_cross_entropy_fwd(const Tensor& logits, const Tensor& target_logits, const OptTensor& mask,
                               c10::string_view reduction) {
  return ce_outputs(check_soft_cross_entropy(logits, target_logits, mask, reduction), logits);
}

Tensor soft_cross_entropy_bwd(const Tensor& grad_loss, const Tensor& logits, const Tensor& target_logits,
                              const OptTensor& mask, const Tensor& lse, const Tensor& denom,
                              c10::string_view reduction) {
  const LossInfo info = check_soft_cross_entropy(logits, target_logits, mask, reduction);
  check_loss_backward(info, "soft_cross_entropy", logits, grad_loss, denom, &lse);
  return at::empty_like(logits, at::MemoryFormat::Contiguous);
}

}  // namespace meta

// The public op: CompositeImplicitAutograd around soft_cross_entropy_fwd (whose autograd is registered from Python).
namespace composite {
namespace {

}  // namespace

Tensor soft_cross_entropy(const Tensor& logits, const Tensor& target_logits, const OptTensor& mask,
                          c10::string_view reduction) {
  static auto fwd = XTC_KERNEL_OP(soft_cross_entropy_fwd);
  return std::get<0>(fwd.call(logits, target_logits, mask, reduction));
}

}  // namespace composite

#if XTC_WITH_CUDA
// CUDA entry points: the glue around the launchers of soft_cross_entropy.cu (cuda_glue.h).
namespace gpu {

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

}  // namespace gpu
#endif  // XTC_WITH_CUDA

}  // namespace xtc
