// cosine_similarity_loss: CPU kernels. Per pixel p over the C channels (dim `dim`):
//   cos = <a,b> / (Da Db), Da = max(|a|, eps), Db = max(|b|, eps), loss = 1 - cos  (PyTorch's eps rule)
//   dloss/da_c = s / Da * ([|a| > eps] cos a_c / Da - b_c / Db)   (a floored norm is a constant)
// and symmetrically for b, with s the upstream scale. Norms and cosine without overflow or underflow:
// cosine_math.h. Nothing is saved: the backward recomputes the three per-pixel sums.
#include "common.h"
#include "cosine_math.h"

#include <torch/library.h>

namespace xtc {
namespace {

constexpr const char* kOp = "cosine_similarity_loss";

// aa += a^2, bb += b^2, ab += a b over one channel row.
template <typename scalar_t, typename acc_t>
inline void row_dots(const scalar_t* __restrict a, const scalar_t* __restrict b, acc_t* __restrict aa,
                     acc_t* __restrict bb, acc_t* __restrict ab, int64_t L) {
  for (int64_t i = 0; i < L; ++i) {
    const acc_t x = static_cast<acc_t>(a[i]), y = static_cast<acc_t>(b[i]);
    aa[i] += x * x;
    bb[i] += y * y;
    ab[i] += x * y;
  }
}

// out[i] = g[i] * (kx[i] x[i] - ky[i] y[i]), exactly 0 where g[i] = 0 (masked pixels: NaN there never leaks)
template <typename scalar_t, typename acc_t>
inline void row_lincomb(const scalar_t* __restrict x, const scalar_t* __restrict y, const acc_t* __restrict g,
                        const acc_t* __restrict kx, const acc_t* __restrict ky, scalar_t* __restrict out, int64_t L) {
  for (int64_t i = 0; i < L; ++i) {
    const acc_t v = g[i] * (kx[i] * static_cast<acc_t>(x[i]) - ky[i] * static_cast<acc_t>(y[i]));
    out[i] = static_cast<scalar_t>(g[i] != acc_t(0) ? v : acc_t(0));
  }
}

// Per-pixel cosine and norms of a block of L pixels (a, b point at channel 0 of its first pixel).
template <typename scalar_t, typename acc_t>
struct BlockCosine {
  acc_t cos[kPixelBlock], inv_a[kPixelBlock], inv_b[kPixelBlock], ka[kPixelBlock], kb[kPixelBlock];

  BlockCosine(const scalar_t* a, const scalar_t* b, int64_t C, int64_t HW, int64_t L, acc_t eps) {
    acc_t aa[kPixelBlock] = {}, bb[kPixelBlock] = {}, ab[kPixelBlock] = {};
    for (int64_t c = 0; c < C; ++c) row_dots(a + c * HW, b + c * HW, aa, bb, ab, L);
    for (int64_t i = 0; i < L; ++i) {
      CosTerms<acc_t> t;
      if (cos_sums_in_range(aa[i], bb[i])) {
        t = cos_from_sums(aa[i], bb[i], ab[i], eps);
      } else {
        const auto load_a = [&](int64_t c) { return static_cast<acc_t>(a[c * HW + i]); };
        const auto load_b = [&](int64_t c) { return static_cast<acc_t>(b[c * HW + i]); };
        t = cos_scaled<acc_t>(load_a, load_b, C, eps);
      }
      cos[i] = t.cos;
      inv_a[i] = t.inv_a;
      inv_b[i] = t.inv_b;
      ka[i] = t.a_big ? t.cos * t.inv_a : acc_t(0);  // [|a| > eps] cos / Da
      kb[i] = t.b_big ? t.cos * t.inv_b : acc_t(0);
    }
  }
};

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& a_in, const at::Tensor& b_in,
                                               const std::optional<at::Tensor>& mask_in, double eps,
                                               c10::string_view reduction, int64_t dim) {
  const LossInfo info = check_cosine_similarity_loss(a_in, b_in, mask_in, eps, reduction, dim);
  const Reduction red = info.red;
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const int64_t N = info.layout.n(), C = info.layout.c(), HW = info.layout.p();
  const auto opts = a.options().dtype(loss_dtype(a));
  at::Tensor loss = red == Reduction::None ? at::empty_symint(info.none_shape, opts) : at::empty({}, opts);
  at::Tensor denom = at::empty({}, opts);
  std::vector<double> part_loss(num_pixel_blocks(N, HW)), part_count(part_loss.size());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "cosine_similarity_loss_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    const bool* mk = mask ? mask->const_data_ptr<bool>() : nullptr;
    acc_t* loss_px = red == Reduction::None ? loss.data_ptr<acc_t>() : nullptr;
    for_each_pixel_block(N, HW, [&](const PixelBlock& blk) {
      const int64_t px = blk.n * HW + blk.begin, off = blk.n * C * HW + blk.begin;
      const BlockCosine<scalar_t, acc_t> bc(ap + off, bp + off, C, HW, blk.size(), static_cast<acc_t>(eps));
      acc_t sum = 0, count = 0;
      for (int64_t i = 0; i < blk.size(); ++i) {
        const bool valid = !mk || mk[px + i];
        const acc_t l = valid ? acc_t(1) - bc.cos[i] : acc_t(0);
        sum += l;
        count += valid ? acc_t(1) : acc_t(0);
        if (loss_px) loss_px[px + i] = l;
      }
      part_loss[blk.index] = sum;
      part_count[blk.index] = count;
    });
  });
  finish_reduction(red, ordered_sum(part_loss), ordered_sum(part_count), loss, denom);
  return {loss, denom};
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_loss_in, const at::Tensor& a_in,
                                                const at::Tensor& b_in, const std::optional<at::Tensor>& mask_in,
                                                const at::Tensor& denom, double eps, c10::string_view reduction,
                                                int64_t dim) {
  const LossInfo info = check_cosine_similarity_loss(a_in, b_in, mask_in, eps, reduction, dim);
  check_loss_backward(info, kOp, a_in, grad_loss_in, denom, nullptr);
  const Reduction red = info.red;
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const int64_t N = info.layout.n(), C = info.layout.c(), HW = info.layout.p();
  const GradLoss grad_loss = prepare_grad_loss(grad_loss_in, a, red);
  at::Tensor grad_a = at::empty_like(a), grad_b = at::empty_like(b);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "cosine_similarity_loss_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    const bool* mk = mask ? mask->const_data_ptr<bool>() : nullptr;
    scalar_t* ga = grad_a.data_ptr<scalar_t>();
    scalar_t* gb = grad_b.data_ptr<scalar_t>();
    const GradScale<acc_t> scale(grad_loss, denom, red);
    const acc_t e = static_cast<acc_t>(eps);
    for_each_pixel_block(N, HW, [&](const PixelBlock& blk) {
      const int64_t px = blk.n * HW + blk.begin, off = blk.n * C * HW + blk.begin, L = blk.size();
      const BlockCosine<scalar_t, acc_t> bc(ap + off, bp + off, C, HW, L, e);
      // grad_a_c = s / Da * (ka a_c - b_c / Db), ka = [|a| > eps] cos / Da; symmetrically for b.
      acc_t s[kPixelBlock], sa[kPixelBlock], sb[kPixelBlock];
      scale.fill(px, s, L);
      for (int64_t i = 0; i < L; ++i) {
        // 0 where the pixel does not count or its scale is 0 (its terms may be NaN: cosine_math.h), so
        // row_lincomb writes exactly 0 there; NaN terms of a counted pixel reach all its channels.
        const acc_t si = (!mk || mk[px + i]) ? s[i] : acc_t(0);
        sa[i] = si != acc_t(0) ? si * bc.inv_a[i] : acc_t(0);
        sb[i] = si != acc_t(0) ? si * bc.inv_b[i] : acc_t(0);
      }
      for (int64_t c = 0; c < C; ++c) {
        const int64_t o = off + c * HW;
        row_lincomb(ap + o, bp + o, sa, bc.ka, bc.inv_b, ga + o, L);
        row_lincomb(bp + o, ap + o, sb, bc.kb, bc.inv_a, gb + o, L);
      }
    });
  });
  return {grad_a, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(xtc_ext, CPU, m) {
  m.impl("cosine_similarity_loss_fwd", &forward_cpu);
  m.impl("cosine_similarity_loss_bwd", &backward_cpu);
}

}  // namespace xtc
