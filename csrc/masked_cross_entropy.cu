// masked_cross_entropy: CUDA kernels (semantics: csrc/masked_cross_entropy.cpp and cuda_kernels.h).
// One thread per group of pixels, looping over the C classes: the forward makes one pass for the
// max and one for sum exp(z - max), z_target and the label-smoothing sum, and saves
// log_norm = log sum_c exp(z_c - max) per pixel; the backward recomputes the max and the softmax.
#include "cuda_common.cuh"

namespace xtc::cuda {
namespace {

// Labels of a pixel group as int64, with valid[i] = (label != ignore_index and in [0, C)).
// A label that is neither sets *error_flag (if given) and gets y = -1: never used as an offset.
template <int VEC, typename index_t>
XTC_HD void load_labels(const index_t* __restrict__ target, int64_t p0, int64_t C,
                                            int64_t ignore_index, int32_t* error_flag, int64_t (&y)[VEC],
                                            bool (&valid)[VEC]) {
  index_t raw[VEC];
  load_pack<VEC>(target + p0, raw);
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    const int64_t t = static_cast<int64_t>(raw[i]);
    const bool ignored = t == ignore_index;
    const bool in_range = t >= 0 && t < C;
    if (!ignored && !in_range && error_flag) *error_flag = 1;  // same value from every writer: benign
    valid[i] = !ignored && in_range;
    y[i] = valid[i] ? t : int64_t{-1};
  }
}

// sum_c weight_c (C without weights), added in class order (the same value in forward and backward).
template <typename acc_t>
XTC_HD acc_t weight_total(const acc_t* __restrict__ weight, int64_t C) {
  if (!weight) return static_cast<acc_t>(C);
  acc_t w = 0;
  for (int64_t c = 0; c < C; ++c) w += weight[c];
  return w;
}

template <typename scalar_t, typename index_t, int VEC>
struct CrossEntropyForward {
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = VEC;

  const scalar_t* logits;  // [N, C, HW]
  const index_t* target;   // [N, HW]
  const acc_t* weight;     // [C] or nullptr
  int64_t C, HW, ignore_index;
  acc_t eps;               // label smoothing
  acc_t* loss_px;          // [N, HW] for reduction none, else nullptr
  acc_t* log_norm;         // [N, HW]
  int32_t* error_flag;

  XTC_HD void operator()(int64_t p0, acc_t& loss_sum, acc_t& denom_sum) const {
    const scalar_t* z = logits + channel0_offset(p0, C, HW);
    acc_t m[VEC];
    channel_max<VEC>(z, C, HW, m);
    int64_t y[VEC];
    bool valid[VEC];
    load_labels<VEC>(target, p0, C, ignore_index, error_flag, y, valid);

    const bool smoothing = eps > acc_t(0);
    acc_t s[VEC], zy[VEC], smooth[VEC];  // sum exp(z - m), z_y, sum_c w_c (m - z_c)
#pragma unroll
    for (int i = 0; i < VEC; ++i) s[i] = zy[i] = smooth[i] = 0;
#pragma unroll 4
    for (int64_t c = 0; c < C; ++c) {
      acc_t v[VEC];
      load_acc<VEC>(z + c * HW, v);
      const acc_t wc = weight ? weight[c] : acc_t(1);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        s[i] += acc_exp(v[i] - m[i]);
        zy[i] = c == y[i] ? v[i] : zy[i];
        if (smoothing) smooth[i] += wc * (m[i] - v[i]);
      }
    }
    const acc_t w_total = smoothing ? weight_total(weight, C) : acc_t(0);
    const acc_t eps_c = eps / static_cast<acc_t>(C);

    acc_t ln[VEC], loss[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      ln[i] = acc_log(s[i]);
      acc_t l = 0, w = 0;
      if (valid[i]) {
        w = weight ? weight[y[i]] : acc_t(1);
        l = (acc_t(1) - eps) * w * (ln[i] + (m[i] - zy[i]));
        // sum_c w_c (log_norm + m - z_c) = W log_norm + sum_c w_c (m - z_c)
        if (smoothing) l += eps_c * (w_total * ln[i] + smooth[i]);
      }
      loss[i] = l;
      loss_sum += l;
      denom_sum += w;
    }
    store_pack<VEC>(log_norm + p0, ln);
    if (loss_px) store_pack<VEC>(loss_px + p0, loss);
  }
};

template <typename scalar_t, typename index_t, int VEC>
struct CrossEntropyBackward {
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = VEC;

  GradScale<acc_t> scale;
  const scalar_t* logits;
  const index_t* target;
  const acc_t* weight;
  int64_t C, HW, ignore_index;
  acc_t eps;
  const acc_t* log_norm;
  scalar_t* grad;

  // grad_c = s * (A p_c - (eps/C) w_c - [c == y] (1 - eps) w_y),  A = (1 - eps) w_y + (eps/C) W.
  XTC_HD void operator()(int64_t p0) const {
    const int64_t off = channel0_offset(p0, C, HW);
    const scalar_t* z = logits + off;
    scalar_t* g = grad + off;
    acc_t m[VEC], ln[VEC], s[VEC];
    channel_max<VEC>(z, C, HW, m);
    load_pack<VEC>(log_norm + p0, ln);
    scale.template load<VEC>(p0, s);
    int64_t y[VEC];
    bool valid[VEC];
    load_labels<VEC>(target, p0, C, ignore_index, nullptr, y, valid);

    const acc_t eps_c = eps / static_cast<acc_t>(C);
    const acc_t w_total = eps > acc_t(0) ? weight_total(weight, C) : acc_t(0);
    acc_t a[VEC], ty[VEC];  // A and (1 - eps) w_y
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const acc_t w = valid[i] ? (weight ? weight[y[i]] : acc_t(1)) : acc_t(0);
      ty[i] = (acc_t(1) - eps) * w;
      a[i] = ty[i] + eps_c * w_total;
    }
#pragma unroll 4
    for (int64_t c = 0; c < C; ++c) {
      acc_t v[VEC];
      load_acc<VEC>(z + c * HW, v);
      // no smoothing: the term is left out, so an inf/NaN weight of an absent class cannot make it NaN
      const acc_t wc = eps > acc_t(0) ? eps_c * (weight ? weight[c] : acc_t(1)) : acc_t(0);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const acc_t p = acc_exp((v[i] - m[i]) - ln[i]);
        const acc_t d = a[i] * p - wc - (c == y[i] ? ty[i] : acc_t(0));
        // exactly 0 where the scale is 0 (ignored pixel, zero upstream gradient, zero-weight mean), as the CPU
        // kernel: a NaN or inf d there never leaks (docs/ops.md, "Gradients")
        const acc_t si = valid[i] ? s[i] : acc_t(0);
        v[i] = si != acc_t(0) ? si * d : acc_t(0);
      }
      store_acc<VEC>(g + c * HW, v);
    }
  }
};

// Calls f(TypeTag<index_t>{}) for the label type.
template <typename F>
cudaError_t dispatch_label(bool is_uint8, const F& f) {
  if (is_uint8) return f(TypeTag<uint8_t>{});
  return f(TypeTag<int64_t>{});
}

}  // namespace

cudaError_t masked_cross_entropy_forward(DType dtype, const void* logits, const void* target, bool target_is_uint8,
                                         const void* weight, int64_t N, int64_t C, int64_t HW, int64_t ignore_index,
                                         double label_smoothing, Reduction reduction, void* loss, void* log_norm,
                                         void* denom, void* workspace, int32_t* error_flag, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using acc_t = acc_type<scalar_t>;
    return dispatch_label(target_is_uint8, [&](auto label_tag) {
      using index_t = typename decltype(label_tag)::type;
      void* loss_px = reduction == Reduction::None ? loss : nullptr;
      const bool vec = can_vectorise(HW, pixel_vec_width<scalar_t>(), logits, target, log_norm, loss_px);
      return dispatch_vec<pixel_vec_width<scalar_t>()>(vec, [&](auto vec_tag) {
        constexpr int V = decltype(vec_tag)::value;
        const CrossEntropyForward<scalar_t, index_t, V> op{
            static_cast<const scalar_t*>(logits), static_cast<const index_t*>(target),
            static_cast<const acc_t*>(weight),    C,
            HW,                                   ignore_index,
            static_cast<acc_t>(label_smoothing),  static_cast<acc_t*>(loss_px),
            static_cast<acc_t*>(log_norm),        error_flag};
        return launch_pixel_reduction(op, N * HW, reduction, loss, denom, workspace, stream);
      });
    });
  });
}

cudaError_t masked_cross_entropy_backward(DType dtype, const void* grad_loss, const void* logits, const void* target,
                                          bool target_is_uint8, const void* weight, int64_t N, int64_t C, int64_t HW,
                                          int64_t ignore_index, double label_smoothing, Reduction reduction,
                                          const void* log_norm, const void* denom, void* grad_logits,
                                          cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using acc_t = acc_type<scalar_t>;
    return dispatch_label(target_is_uint8, [&](auto label_tag) {
      using index_t = typename decltype(label_tag)::type;
      const void* grad_px = reduction == Reduction::None ? grad_loss : nullptr;
      const bool vec = can_vectorise(HW, pixel_vec_width<scalar_t>(), logits, target, log_norm, grad_px, grad_logits);
      return dispatch_vec<pixel_vec_width<scalar_t>()>(vec, [&](auto vec_tag) {
        constexpr int V = decltype(vec_tag)::value;
        const CrossEntropyBackward<scalar_t, index_t, V> op{
            GradScale<acc_t>{static_cast<const acc_t*>(grad_loss), static_cast<const acc_t*>(denom), reduction},
            static_cast<const scalar_t*>(logits),
            static_cast<const index_t*>(target),
            static_cast<const acc_t*>(weight),
            C,
            HW,
            ignore_index,
            static_cast<acc_t>(label_smoothing),
            static_cast<const acc_t*>(log_norm),
            static_cast<scalar_t*>(grad_logits)};
        return launch_pixel_map(op, N * HW, stream);
      });
    });
  });
}

}  // namespace xtc::cuda
