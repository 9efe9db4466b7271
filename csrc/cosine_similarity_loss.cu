// cosine_similarity_loss: CUDA kernels. Per pixel over the C channels:
//   na = |a|, nb = |b|, Da = max(na, eps), Db = max(nb, eps), cos = <a, b> / (Da Db), loss = 1 - cos
// (0 and not counted where the mask excludes the pixel). Backward, with s the upstream scale:
//   grad_a_c = s / Da * ([na > eps] cos a_c / Da - b_c / Db)   (Da = eps is a constant), same for b,
// exactly 0 where the pixel is masked or s is 0 (as the CPU kernels; docs/ops.md, "Values").
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

// Per-pixel terms of the W pixels of a group, for the pixels that count (the others get zero terms and
// never reach the fallback). Where a counted pixel's sums are out of range (cosine_math.h) the terms are
// recomputed by the scaled fallback if kScaled; else the call returns false and the caller reruns the
// group pixel by pixel out of line (run_scaled). The fallback is thus inlined once per kernel (W = 1) and
// kept out of the vectorised hot path, whose registers it would cost (it ran 4 times inlined there).
// The VEC = 1 kernels call run<true, 1> directly: there the inlined fallback costs no extra registers.
template <bool kScaled, int W, typename scalar_t, typename acc_t>
XTC_HD bool pixel_terms(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t C, int64_t HW,
                        const bool (&counts)[W], const acc_t (&aa)[W], const acc_t (&bb)[W], const acc_t (&ab)[W],
                        acc_t eps, CosTerms<acc_t> (&t)[W]) {
#pragma unroll
  for (int i = 0; i < W; ++i) {
    t[i] = CosTerms<acc_t>{acc_t(0), acc_t(0), acc_t(0), false, false};
    if (!counts[i]) continue;
    if (cos_sums_in_range(aa[i], bb[i])) {
      t[i] = cos_from_sums(aa[i], bb[i], ab[i], eps);
    } else if constexpr (kScaled) {
      const auto load_a = [&](int64_t c) { return Scalar<scalar_t>::to_acc(a[c * HW + i]); };
      const auto load_b = [&](int64_t c) { return Scalar<scalar_t>::to_acc(b[c * HW + i]); };
      t[i] = cos_scaled<acc_t>(load_a, load_b, C, eps);
    } else {
      return false;
    }
  }
  return true;
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

  struct Sums {
    acc_t loss, count;
  };

  XTC_HD void operator()(int64_t p0, acc_t& loss_sum, acc_t& count_sum) const {
    if constexpr (VEC == 1) {
      run<true, 1>(p0, loss_sum, count_sum);
    } else if (!run<false, VEC>(p0, loss_sum, count_sum)) {
      const Sums r = run_scaled(*this, p0);
      loss_sum += r.loss;
      count_sum += r.count;
    }
  }

  // The W pixels from p0; false (nothing written or added) if one needs the fallback and kScaled is not set.
  template <bool kScaled, int W>
  XTC_HD bool run(int64_t p0, acc_t& loss_sum, acc_t& count_sum) const {
    const int64_t off = channel0_offset(p0, C, HW);
    acc_t dot[W], aa[W], bb[W];
    dot_and_norms<W>(a + off, b + off, C, HW, dot, aa, bb);
    bool valid[W];
    load_mask<W>(mask, p0, valid);
    CosTerms<acc_t> t[W];
    if (!pixel_terms<kScaled>(a + off, b + off, C, HW, valid, aa, bb, dot, eps, t)) return false;
    acc_t loss[W];
#pragma unroll
    for (int i = 0; i < W; ++i) {
      loss[i] = valid[i] ? acc_t(1) - t[i].cos : acc_t(0);
      loss_sum += loss[i];
      count_sum += valid[i] ? acc_t(1) : acc_t(0);
    }
    if (loss_px) store_pack<W>(loss_px + p0, loss);
    return true;
  }

  // The group pixel by pixel with the fallback; out of line, and the functor by value (its address would
  // copy the kernel parameter to the stack).
  static XTC_NOINLINE Sums run_scaled(const CosineForward op, int64_t p0) {
    Sums r{acc_t(0), acc_t(0)};
    for (int i = 0; i < VEC; ++i) op.template run<true, 1>(p0 + i, r.loss, r.count);
    return r;
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
    if constexpr (VEC == 1) {
      run<true, 1>(p0);
    } else if (!run<false, VEC>(p0)) {
      run_scaled(*this, p0);
    }
  }

  // The W pixels from p0; false (nothing written) if one needs the fallback and kScaled is not set.
  template <bool kScaled, int W>
  XTC_HD bool run(int64_t p0) const {
    const int64_t off = channel0_offset(p0, C, HW);
    acc_t dot[W], aa[W], bb[W];
    dot_and_norms<W>(a + off, b + off, C, HW, dot, aa, bb);
    acc_t s[W];
    scale.template load<W>(p0, s);
    bool valid[W], counts[W];
    load_mask<W>(mask, p0, valid);
#pragma unroll
    for (int i = 0; i < W; ++i) {
      s[i] = valid[i] ? s[i] : acc_t(0);
      counts[i] = s[i] != acc_t(0);
    }
    CosTerms<acc_t> t[W];
    if (!pixel_terms<kScaled>(a + off, b + off, C, HW, counts, aa, bb, dot, eps, t)) return false;
    // grad_a_c = sa * (ka a_c - inv_b b_c), sa = s / Da, ka = [na > eps] cos / Da; same for b. sa = sb = 0,
    // and the gradient exactly 0 as on the CPU, where the pixel is masked or its scale is 0 (its terms
    // are never computed: NaN or inf there never leak, docs/ops.md "Values").
    acc_t sa[W], sb[W], ka[W], kb[W];
#pragma unroll
    for (int i = 0; i < W; ++i) {
      sa[i] = counts[i] ? s[i] * t[i].inv_a : acc_t(0);
      sb[i] = counts[i] ? s[i] * t[i].inv_b : acc_t(0);
      ka[i] = t[i].a_big ? t[i].cos * t[i].inv_a : acc_t(0);
      kb[i] = t[i].b_big ? t[i].cos * t[i].inv_b : acc_t(0);
    }
#pragma unroll 4
    for (int64_t c = 0; c < C; ++c) {
      const int64_t row = off + c * HW;
      acc_t va[W], vb[W], out[W];
      load_acc<W>(a + row, va);
      load_acc<W>(b + row, vb);
      if (grad_a) {
#pragma unroll
        for (int i = 0; i < W; ++i)
          out[i] = sa[i] != acc_t(0) ? sa[i] * (ka[i] * va[i] - t[i].inv_b * vb[i]) : acc_t(0);
        store_acc<W>(grad_a + row, out);
      }
      if (grad_b) {
#pragma unroll
        for (int i = 0; i < W; ++i)
          out[i] = sb[i] != acc_t(0) ? sb[i] * (kb[i] * vb[i] - t[i].inv_a * va[i]) : acc_t(0);
        store_acc<W>(grad_b + row, out);
      }
    }
    return true;
  }

  // The group pixel by pixel with the fallback; out of line, as CosineForward::run_scaled.
  static XTC_NOINLINE void run_scaled(const CosineBackward op, int64_t p0) {
    for (int i = 0; i < VEC; ++i) op.template run<true, 1>(p0 + i);
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
