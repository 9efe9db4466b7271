// soft_cross_entropy: CPU kernels for -sum_c softmax(target_logits)_c * log_softmax(logits)_c per pixel
// (XTasC-Net Eq. 13). Forward saves log_norm - max of the logits per pixel (bounded by log C, so exact to
// fp32 rounding); the backward recomputes both maxima and the target softmax.
#include "common.h"

#include <torch/library.h>

namespace xtc {
namespace {

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& logits_in, const at::Tensor& target_in,
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

at::Tensor backward_cpu(const at::Tensor& grad_loss_in, const at::Tensor& logits_in, const at::Tensor& target_in,
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

}  // namespace

TORCH_LIBRARY_IMPL(xtc_ext, CPU, m) {
  m.impl("soft_cross_entropy_fwd", &forward_cpu);
  m.impl("soft_cross_entropy_bwd", &backward_cpu);
}

}  // namespace xtc
