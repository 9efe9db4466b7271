// cosine_similarity_loss: CPU kernels. Per pixel p over the C channels (dim `dim`):
//   cos = <a,b> / (Da Db), Da = max(|a|, eps), Db = max(|b|, eps), loss = 1 - cos  (PyTorch's eps rule)
//   dloss/da_c = s / Da * ([|a| > eps] cos a_c / Da - b_c / Db)   (a floored norm is a constant)
// and symmetrically for b, with s the upstream scale. Norms and cosine without overflow or underflow:
// cosine_math.h. Nothing is saved: the backward recomputes the three per-pixel sums.
#include "common.h"
#include "op_table.h"

#if XTC_WITH_CUDA
#include "cuda_glue.h"
#endif
#include "cosine_math.h"

namespace xtc {
namespace {

// Argument validation: the one check of every kernel of this op (CPU, Meta, CUDA); checks.h.
LossInfo check_cosine_similarity_loss(const at::Tensor& a, const at::Tensor& b, const OptTensor& mask, double eps,
                                      std::string_view reduction, int64_t dim) {
  constexpr const char* op = "cosine_similarity_loss";
  check_float(a, op, "a");
  const int64_t rank = std::max<int64_t>(a.dim(), 1);
  TORCH_CHECK_VALUE(dim >= -rank && dim < rank, op, ": dim must be in [", -rank, ", ", rank - 1, "] for a ",
                    a.dim(), "-D input, got ", dim);
  LossInfo info{parse_reduction(reduction, op), make_layout(a, dim < 0 ? dim + rank : dim, op, "a", a.dim() > 0), {}};
  check_same(b, a, op, "b", "a");
  check_mask(mask, info.layout, a, op, "a");
  // The kernels use eps in the accumulation type (float32 unless a is float64): it must be > 0 there too, as
  // an eps below ~7e-46 rounds to 0 in float32 (a zero vector would then give NaN). docs/ops.md, "Reductions".
  const bool acc64 = a.scalar_type() == at::kDouble;
  const double eps_acc = acc64 ? eps : static_cast<double>(static_cast<float>(eps));
  TORCH_CHECK_VALUE(eps > 0 && eps_acc > 0, op, ": eps must be > 0 in the accumulation type (",
                    acc64 ? "float64" : "float32", " for ", a.scalar_type(), " inputs), got ", eps);
  info.none_shape = info.layout.pixel_shape;
  return info;
}


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

}  // namespace

// CPU kernels (registered by ops.cpp from the op table).
namespace cpu {

std::tuple<at::Tensor, at::Tensor> cosine_similarity_loss_fwd(const at::Tensor& a_in, const at::Tensor& b_in,
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

std::tuple<at::Tensor, at::Tensor> cosine_similarity_loss_bwd(const at::Tensor& grad_loss_in, const at::Tensor& a_in,
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

}  // namespace cpu

// Meta (fake-tensor) kernels: the same check, outputs of the real kernels' shapes, dtypes and strides.
namespace meta {

Tensor2 cosine_similarity_loss_fwd(const Tensor& a, const Tensor& b, const OptTensor& mask, double eps,
                                   c10::string_view reduction, int64_t dim) {
  return loss_outputs(check_cosine_similarity_loss(a, b, mask, eps, reduction, dim), a);
}

Tensor2 cosine_similarity_loss_bwd(const Tensor& grad_loss, const Tensor& a, const Tensor& b, const OptTensor& mask,
                                   const Tensor& denom, double eps, c10::string_view reduction, int64_t dim) {
  const LossInfo info = check_cosine_similarity_loss(a, b, mask, eps, reduction, dim);
  check_loss_backward(info, "cosine_similarity_loss", a, grad_loss, denom, nullptr);
  return {at::empty_like(a, at::MemoryFormat::Contiguous), at::empty_like(b, at::MemoryFormat::Contiguous)};
}

}  // namespace meta

// The public op: CompositeImplicitAutograd around cosine_similarity_loss_fwd (whose autograd is registered from Python).
namespace composite {
namespace {

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

}  // namespace

Tensor cosine_similarity_loss(const Tensor& a, const Tensor& b, const OptTensor& mask, double eps,
                              c10::string_view reduction, int64_t dim) {
  static auto fwd = XTC_KERNEL_OP(cosine_similarity_loss_fwd);
  if (a.sym_sizes() == b.sym_sizes()) return std::get<0>(fwd.call(a, b, mask, eps, reduction, dim));
  const c10::SymDimVector shape = broadcast_shape(a, b);
  return std::get<0>(fwd.call(a.expand_symint(shape), b.expand_symint(shape), mask, eps, reduction, dim));
}

}  // namespace composite

#if XTC_WITH_CUDA
// CUDA entry points: the glue around the launchers of cosine_similarity_loss.cu (cuda_glue.h).
namespace gpu {

constexpr const char* kCos = "cosine_similarity_loss";

std::tuple<Tensor, Tensor> cosine_similarity_loss_fwd(const Tensor& a_in, const Tensor& b_in, const OptTensor& mask_in,
                                                      double eps, c10::string_view reduction, int64_t dim) {
  const LossInfo info = check_cosine_similarity_loss(a_in, b_in, mask_in, eps, reduction, dim);
  const CudaCall call(a_in, kCos, "a");
  const Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const int64_t N = info.layout.n(), C = info.layout.c(), P = info.layout.p();
  auto [loss, denom] = loss_outputs(info, a);
  Tensor workspace = reduction_workspace(N * P, a.options().dtype(loss_dtype(a)));
  C10_CUDA_CHECK(cuda::cosine_similarity_loss_forward(cuda_dtype(a, kCos), a.const_data_ptr(), b.const_data_ptr(),
                                                      mask_ptr(mask), eps, N, C, P, cuda_reduction(info.red),
                                                      loss.data_ptr(), denom.data_ptr(), workspace.data_ptr(),
                                                      call.stream));
  return {loss, denom};
}

std::tuple<Tensor, Tensor> cosine_similarity_loss_bwd(const Tensor& grad_loss_in, const Tensor& a_in,
                                                      const Tensor& b_in, const OptTensor& mask_in,
                                                      const Tensor& denom_in, double eps, c10::string_view reduction,
                                                      int64_t dim) {
  const LossInfo info = check_cosine_similarity_loss(a_in, b_in, mask_in, eps, reduction, dim);
  check_loss_backward(info, kCos, a_in, grad_loss_in, denom_in, nullptr);
  const CudaCall call(a_in, kCos, "a");
  const Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const OptTensor mask = kernel_mask(mask_in);
  const GradLoss grad_loss = prepare_grad_loss(grad_loss_in, a, info.red);
  const Tensor denom = prepare_denom(denom_in, a);
  const int64_t N = info.layout.n(), C = info.layout.c(), P = info.layout.p();
  Tensor grad_a = at::empty_like(a, at::MemoryFormat::Contiguous);
  Tensor grad_b = at::empty_like(b, at::MemoryFormat::Contiguous);
  C10_CUDA_CHECK(cuda::cosine_similarity_loss_backward(
      cuda_dtype(a, kCos), grad_loss.values.const_data_ptr(), a.const_data_ptr(), b.const_data_ptr(), mask_ptr(mask),
      eps, N, C, P, grad_mode(grad_loss, info.red), denom.const_data_ptr(), grad_a.data_ptr(), grad_b.data_ptr(),
      call.stream));
  return {grad_a, grad_b};
}

}  // namespace gpu
#endif  // XTC_WITH_CUDA

}  // namespace xtc
