// cosine_similarity_loss: CUDA kernels. Per pixel over the C channels:
//   na = |a|, nb = |b|, Da = max(na, eps), Db = max(nb, eps), cos = <a, b> / (Da Db), loss = 1 - cos
// (0 and not counted where the mask excludes the pixel). Backward, with s the upstream scale:
//   d cos / d a_c = b_c / (Da Db) - [na > eps] cos a_c / na^2   (Da = na there; Da = eps is constant)
//   grad_a_c = -s (b_c / (Da Db) - [na > eps] cos a_c / na^2), and symmetrically for b.
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

// max(n, eps) with std::max's comparison (a NaN norm stays NaN).
template <typename acc_t>
XTC_HD acc_t clamp_norm(acc_t n, acc_t eps) {
  return n < eps ? eps : n;
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
      const acc_t cos = dot[i] / (clamp_norm(acc_sqrt(aa[i]), eps) * clamp_norm(acc_sqrt(bb[i]), eps));
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
    // grad_a_c = ka * a_c + kab * b_c, grad_b_c = kb * b_c + kab * a_c
    acc_t kab[VEC], ka[VEC], kb[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const acc_t na = acc_sqrt(aa[i]), nb = acc_sqrt(bb[i]);
      const acc_t inv = acc_t(1) / (clamp_norm(na, eps) * clamp_norm(nb, eps));
      const acc_t cos = dot[i] * inv;
      const acc_t si = valid[i] ? s[i] : acc_t(0);
      kab[i] = -si * inv;
      ka[i] = na > eps ? si * cos / (na * na) : acc_t(0);
      kb[i] = nb > eps ? si * cos / (nb * nb) : acc_t(0);
    }
#pragma unroll 4
    for (int64_t c = 0; c < C; ++c) {
      const int64_t row = off + c * HW;
      acc_t va[VEC], vb[VEC], out[VEC];
      load_acc<VEC>(a + row, va);
      load_acc<VEC>(b + row, vb);
      if (grad_a) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] = valid[i] ? ka[i] * va[i] + kab[i] * vb[i] : acc_t(0);
        store_acc<VEC>(grad_a + row, out);
      }
      if (grad_b) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] = valid[i] ? kb[i] * vb[i] + kab[i] * va[i] : acc_t(0);
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
