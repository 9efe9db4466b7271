// cosine_similarity_loss: CUDA kernels. Per pixel over the C channels:
//   na = |a|, nb = |b|, Da = max(na, eps), Db = max(nb, eps), cos = <a, b> / (Da Db), loss = 1 - cos
// (0 and not counted where the mask excludes the pixel). Backward, with s the upstream scale:
//   grad_a_c = s / Da * ([na > eps] cos a_c / Da - b_c / Db)   (Da = eps is a constant), same for b.
// Norms and cosine without overflow or underflow, as the CPU kernels: cosine_math.h.
#include "cosine_math.h"
#include "cuda_common.cuh"

namespace xtc::cuda {
namespace {

// Per-pixel dot product and squared norms over the channels of a pixel group.
template <int VEC, typename scalar_t>
XTC_HD void dot_and_norms(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                              int64_t C, int64_t HW, acc_type<scalar_t> (&dot)[VEC],
                                              acc_type<scalar_t> (&aa)[VEC], acc_type<scalar_t> (&bb)[VEC]) {
  using acc_t = acc_type<scalar_t>;
#pragma unroll
  for (int i = 0; i < VEC; ++i) dot[i] = aa[i] = bb[i] = 0;
#pragma unroll 4
  for (int64_t c = 0; c < C; ++c) {
    acc_t va[VEC], vb[VEC];
    load_acc<VEC>(a + c * HW, va);
    load_acc<VEC>(b + c * HW, vb);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      dot[i] += va[i] * vb[i];
      aa[i] += va[i] * va[i];
      bb[i] += vb[i] * vb[i];
    }
  }
}

// cos, |a|, |b| of pixel p0 + i of the group, from its sums or, out of range, rescaled (cosine_math.h).
template <typename scalar_t, typename acc_t>
XTC_HD CosTerms<acc_t> pixel_cos(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t C,
                                 int64_t HW, acc_t aa, acc_t bb, acc_t ab, acc_t eps) {
  if (cos_sums_in_range(aa, bb)) return cos_from_sums(aa, bb, ab, eps);
  const auto load_a = [&](int64_t c) { return Scalar<scalar_t>::to_acc(a[c * HW]); };
  const auto load_b = [&](int64_t c) { return Scalar<scalar_t>::to_acc(b[c * HW]); };
  return cos_scaled<acc_t>(load_a, load_b, C, eps);
}

template <typename scalar_t, int VEC>
struct CosineForward {
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = VEC;

  const scalar_t* a;  // [N, C, HW]
  const scalar_t* b;  // [N, C, HW]
  const bool* mask;   // [N, HW] or nullptr
  acc_t eps;
  int64_t C, HW;
  acc_t* loss_px;     // [N, HW] for reduction none, else nullptr

  XTC_HD void operator()(int64_t p0, acc_t& loss_sum, acc_t& count_sum) const {
    const int64_t off = channel0_offset(p0, C, HW);
    acc_t dot[VEC], aa[VEC], bb[VEC];
    dot_and_norms<VEC>(a + off, b + off, C, HW, dot, aa, bb);
    bool valid[VEC];
    load_mask<VEC>(mask, p0, valid);
    acc_t loss[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const acc_t cos = pixel_cos(a + off + i, b + off + i, C, HW, aa[i], bb[i], dot[i], eps).cos;
      loss[i] = valid[i] ? acc_t(1) - cos : acc_t(0);
      loss_sum += loss[i];
      count_sum += valid[i] ? acc_t(1) : acc_t(0);
    }
    if (loss_px) store_pack<VEC>(loss_px + p0, loss);
  }
};

template <typename scalar_t, int VEC>
struct CosineBackward {
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = VEC;

  GradScale<acc_t> scale;
  const scalar_t* a;
  const scalar_t* b;
  const bool* mask;
  acc_t eps;
  int64_t C, HW;
  scalar_t* grad_a;  // either may be nullptr
  scalar_t* grad_b;

  XTC_HD void operator()(int64_t p0) const {
    const int64_t off = channel0_offset(p0, C, HW);
    acc_t dot[VEC], aa[VEC], bb[VEC];
    dot_and_norms<VEC>(a + off, b + off, C, HW, dot, aa, bb);
    acc_t s[VEC];
    scale.template load<VEC>(p0, s);
    bool valid[VEC];
    load_mask<VEC>(mask, p0, valid);
    // grad_a_c = sa * (ka a_c - inv_b b_c), sa = s / Da, ka = [na > eps] cos / Da; same for b.
    acc_t sa[VEC], sb[VEC], ka[VEC], kb[VEC], inv_a[VEC], inv_b[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const CosTerms<acc_t> t = pixel_cos(a + off + i, b + off + i, C, HW, aa[i], bb[i], dot[i], eps);
      inv_a[i] = t.inv_a;
      inv_b[i] = t.inv_b;
      const acc_t si = valid[i] ? s[i] : acc_t(0);
      sa[i] = si * inv_a[i];
      sb[i] = si * inv_b[i];
      ka[i] = t.a_big ? t.cos * inv_a[i] : acc_t(0);
      kb[i] = t.b_big ? t.cos * inv_b[i] : acc_t(0);
    }
#pragma unroll 4
    for (int64_t c = 0; c < C; ++c) {
      const int64_t row = off + c * HW;
      acc_t va[VEC], vb[VEC], out[VEC];
      load_acc<VEC>(a + row, va);
      load_acc<VEC>(b + row, vb);
      if (grad_a) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] = valid[i] ? sa[i] * (ka[i] * va[i] - inv_b[i] * vb[i]) : acc_t(0);
        store_acc<VEC>(grad_a + row, out);
      }
      if (grad_b) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] = valid[i] ? sb[i] * (kb[i] * vb[i] - inv_a[i] * va[i]) : acc_t(0);
        store_acc<VEC>(grad_b + row, out);
      }
    }
  }
};

}  // namespace

cudaError_t cosine_similarity_loss_forward(DType dtype, const void* a, const void* b, const bool* mask, double eps,
                                           int64_t N, int64_t C, int64_t HW, Reduction reduction, void* loss,
                                           void* denom, void* workspace, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using acc_t = acc_type<scalar_t>;
    void* loss_px = reduction == Reduction::None ? loss : nullptr;
    const bool vec = can_vectorise(HW, pixel_vec_width<scalar_t>(), a, b, mask, loss_px);
    return dispatch_vec<pixel_vec_width<scalar_t>()>(vec, [&](auto vec_tag) {
      constexpr int V = decltype(vec_tag)::value;
      const CosineForward<scalar_t, V> op{static_cast<const scalar_t*>(a),
                                          static_cast<const scalar_t*>(b),
                                          mask,
                                          static_cast<acc_t>(eps),
                                          C,
                                          HW,
                                          static_cast<acc_t*>(loss_px)};
      return launch_pixel_reduction(op, N * HW, reduction, loss, denom, workspace, stream);
    });
  });
}

cudaError_t cosine_similarity_loss_backward(DType dtype, const void* grad_loss, const void* a, const void* b,
                                            const bool* mask, double eps, int64_t N, int64_t C, int64_t HW,
                                            Reduction reduction, const void* denom, void* grad_a, void* grad_b,
                                            cudaStream_t stream) {
  if (!grad_a && !grad_b) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using acc_t = acc_type<scalar_t>;
    const void* grad_px = reduction == Reduction::None ? grad_loss : nullptr;
    const bool vec = can_vectorise(HW, pixel_vec_width<scalar_t>(), a, b, mask, grad_px, grad_a, grad_b);
    return dispatch_vec<pixel_vec_width<scalar_t>()>(vec, [&](auto vec_tag) {
      constexpr int V = decltype(vec_tag)::value;
      const CosineBackward<scalar_t, V> op{
          GradScale<acc_t>{static_cast<const acc_t*>(grad_loss), static_cast<const acc_t*>(denom), reduction},
          static_cast<const scalar_t*>(a),
          static_cast<const scalar_t*>(b),
          mask,
          static_cast<acc_t>(eps),
          C,
          HW,
          static_cast<scalar_t*>(grad_a),
          static_cast<scalar_t*>(grad_b)};
      return launch_pixel_map(op, N * HW, stream);
    });
  });
}

}  // namespace xtc::cuda
