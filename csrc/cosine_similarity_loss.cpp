// cosine_similarity_loss: CPU kernels. Per pixel p over the C channels:
//   cos = <a,b> / (max(|a|, eps) max(|b|, eps)),  loss = 1 - cos   (PyTorch's cosine_similarity eps rule)
//   dloss/da_c = ka a_c - kab b_c,  ka = [|a| > eps] cos / |a|^2,  kab = 1 / (max(|a|, eps) max(|b|, eps))
// and symmetrically for b. Nothing is saved: the backward recomputes the three per-pixel sums.
#include "common.h"

#include <torch/library.h>

namespace xtc {
namespace {

constexpr const char* kOp = "cosine_similarity_loss";

void check_inputs(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& mask, double eps) {
  check_float_input(a, kOp, "a", 4);
  check_same(a, b, kOp, "a", "b");
  check_mask(mask, a, kOp);
  TORCH_CHECK_VALUE(eps > 0, kOp, ": eps must be > 0, got ", eps);
}

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

// out[i] = kx[i] x[i] - ky[i] y[i]
template <typename scalar_t, typename acc_t>
inline void row_lincomb(const scalar_t* __restrict x, const scalar_t* __restrict y, const acc_t* __restrict kx,
                        const acc_t* __restrict ky, scalar_t* __restrict out, int64_t L) {
  for (int64_t i = 0; i < L; ++i) {
    out[i] = static_cast<scalar_t>(kx[i] * static_cast<acc_t>(x[i]) - ky[i] * static_cast<acc_t>(y[i]));
  }
}

// Per-pixel sums of a block, then cos, the clamped norms product and the per-pixel norms.
template <typename scalar_t, typename acc_t>
struct BlockCosine {
  acc_t cos[kPixelBlock], inv_d[kPixelBlock], na[kPixelBlock], nb[kPixelBlock];

  BlockCosine(const scalar_t* a, const scalar_t* b, int64_t C, int64_t HW, int64_t L, acc_t eps) {
    acc_t aa[kPixelBlock] = {}, bb[kPixelBlock] = {}, ab[kPixelBlock] = {};
    for (int64_t c = 0; c < C; ++c) row_dots(a + c * HW, b + c * HW, aa, bb, ab, L);
    for (int64_t i = 0; i < L; ++i) {
      na[i] = std::sqrt(aa[i]);
      nb[i] = std::sqrt(bb[i]);
      inv_d[i] = acc_t(1) / (std::max(na[i], eps) * std::max(nb[i], eps));
      cos[i] = ab[i] * inv_d[i];
    }
  }
};

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& a_in, const at::Tensor& b_in,
                                               const std::optional<at::Tensor>& mask_in, double eps,
                                               c10::string_view reduction) {
  check_inputs(a_in, b_in, mask_in, eps);
  const Reduction red = parse_reduction(reduction, kOp);
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const std::optional<at::Tensor> mask = mask_in ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt;
  const int64_t N = a.size(0), C = a.size(1), HW = a.size(2) * a.size(3);
  const auto opts = a.options().dtype(loss_dtype(a));
  at::Tensor loss = red == Reduction::None ? at::empty({N, a.size(2), a.size(3)}, opts) : at::empty({}, opts);
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
                                                const at::Tensor& denom, double eps, c10::string_view reduction) {
  check_inputs(a_in, b_in, mask_in, eps);
  const Reduction red = parse_reduction(reduction, kOp);
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const std::optional<at::Tensor> mask = mask_in ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt;
  const int64_t N = a.size(0), C = a.size(1), HW = a.size(2) * a.size(3);
  const at::Tensor grad_loss = prepare_grad_loss(grad_loss_in, a, red, {N, a.size(2), a.size(3)}, kOp);
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
      acc_t s[kPixelBlock], ka[kPixelBlock], kb[kPixelBlock], kab[kPixelBlock];
      scale.fill(px, s, L);
      for (int64_t i = 0; i < L; ++i) {
        const acc_t si = (!mk || mk[px + i]) ? s[i] : acc_t(0);
        ka[i] = bc.na[i] > e ? si * bc.cos[i] / (bc.na[i] * bc.na[i]) : acc_t(0);
        kb[i] = bc.nb[i] > e ? si * bc.cos[i] / (bc.nb[i] * bc.nb[i]) : acc_t(0);
        kab[i] = si * bc.inv_d[i];
      }
      for (int64_t c = 0; c < C; ++c) {
        const int64_t o = off + c * HW;
        row_lincomb(ap + o, bp + o, ka, kab, ga + o, L);
        row_lincomb(bp + o, ap + o, kb, kab, gb + o, L);
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
