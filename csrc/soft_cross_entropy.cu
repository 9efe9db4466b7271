// soft_cross_entropy: CUDA kernels (semantics: csrc/soft_cross_entropy.cpp and cuda_kernels.h).
// loss_p = log_norm_z + sum_c q_c (max_z - z_c) / sum_c e_c with e_c = exp(t_c - max_t), q = e / sum e:
// every term >= 0, no cancellation for large logits. The forward saves log_norm_z per pixel; the
// backward recomputes both maxima and the target's normaliser.
#include "cuda_common.cuh"

namespace xtc::cuda {
namespace {

template <typename scalar_t, int VEC>
struct SoftCrossEntropyForward {
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = VEC;

  const scalar_t* logits;         // [N, C, HW]
  const scalar_t* target_logits;  // [N, C, HW]
  const bool* mask;               // [N, HW] or nullptr
  int64_t C, HW;
  acc_t* loss_px;                 // [N, HW] for reduction none, else nullptr
  acc_t* log_norm;                // [N, HW]

  XTC_HD void operator()(int64_t p0, acc_t& loss_sum, acc_t& count_sum) const {
    const int64_t off = channel0_offset(p0, C, HW);
    const scalar_t* z = logits + off;
    const scalar_t* t = target_logits + off;
    acc_t mz[VEC], mt[VEC];
    channel_max<VEC>(z, C, HW, mz);
    channel_max<VEC>(t, C, HW, mt);
    acc_t sz[VEC], st[VEC], cross[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) sz[i] = st[i] = cross[i] = 0;
#pragma unroll 4
    for (int64_t c = 0; c < C; ++c) {
      acc_t vz[VEC], vt[VEC];
      load_acc<VEC>(z + c * HW, vz);
      load_acc<VEC>(t + c * HW, vt);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const acc_t et = acc_exp(vt[i] - mt[i]);
        sz[i] += acc_exp(vz[i] - mz[i]);
        st[i] += et;
        cross[i] += et * (mz[i] - vz[i]);
      }
    }
    bool valid[VEC];
    load_mask<VEC>(mask, p0, valid);
    acc_t ln[VEC], loss[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      ln[i] = acc_log(sz[i]);
      loss[i] = valid[i] ? ln[i] + cross[i] / st[i] : acc_t(0);
      loss_sum += loss[i];
      count_sum += valid[i] ? acc_t(1) : acc_t(0);
    }
    store_pack<VEC>(log_norm + p0, ln);
    if (loss_px) store_pack<VEC>(loss_px + p0, loss);
  }
};

template <typename scalar_t, int VEC>
struct SoftCrossEntropyBackward {
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = VEC;

  GradScale<acc_t> scale;
  const scalar_t* logits;
  const scalar_t* target_logits;
  const bool* mask;
  int64_t C, HW;
  const acc_t* log_norm;
  scalar_t* grad;

  // grad_c = s * (softmax(z)_c - softmax(t)_c), 0 for masked pixels.
  XTC_HD void operator()(int64_t p0) const {
    const int64_t off = channel0_offset(p0, C, HW);
    const scalar_t* z = logits + off;
    const scalar_t* t = target_logits + off;
    scalar_t* g = grad + off;
    acc_t mz[VEC], mt[VEC], st[VEC], ln[VEC], s[VEC];
    channel_max<VEC>(z, C, HW, mz);
    channel_max<VEC>(t, C, HW, mt);
#pragma unroll
    for (int i = 0; i < VEC; ++i) st[i] = 0;
#pragma unroll 4
    for (int64_t c = 0; c < C; ++c) {
      acc_t vt[VEC];
      load_acc<VEC>(t + c * HW, vt);
#pragma unroll
      for (int i = 0; i < VEC; ++i) st[i] += acc_exp(vt[i] - mt[i]);
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) st[i] = acc_log(st[i]);  // log normaliser of the target
    load_pack<VEC>(log_norm + p0, ln);
    scale.template load<VEC>(p0, s);
    bool valid[VEC];
    load_mask<VEC>(mask, p0, valid);
    // the gradient is exactly 0 where the scale is 0 (masked pixel or zero upstream gradient), as the CPU
    // kernel: NaN or inf there never leak (docs/ops.md, "Values")
#pragma unroll
    for (int i = 0; i < VEC; ++i) s[i] = valid[i] ? s[i] : acc_t(0);
#pragma unroll 4
    for (int64_t c = 0; c < C; ++c) {
      acc_t vz[VEC], vt[VEC];
      load_acc<VEC>(z + c * HW, vz);
      load_acc<VEC>(t + c * HW, vt);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const acc_t p = acc_exp((vz[i] - mz[i]) - ln[i]);
        const acc_t q = acc_exp((vt[i] - mt[i]) - st[i]);
        vz[i] = s[i] != acc_t(0) ? s[i] * (p - q) : acc_t(0);
      }
      store_acc<VEC>(g + c * HW, vz);
    }
  }
};

}  // namespace

cudaError_t soft_cross_entropy_forward(DType dtype, const void* logits, const void* target_logits, const bool* mask,
                                       int64_t N, int64_t C, int64_t HW, Reduction reduction, void* loss,
                                       void* log_norm, void* denom, void* workspace, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using acc_t = acc_type<scalar_t>;
    void* loss_px = reduction == Reduction::None ? loss : nullptr;
    const bool vec = can_vectorise(HW, pixel_vec_width<scalar_t>(), logits, target_logits, mask, log_norm, loss_px);
    return dispatch_vec<pixel_vec_width<scalar_t>()>(vec, [&](auto vec_tag) {
      constexpr int V = decltype(vec_tag)::value;
      const SoftCrossEntropyForward<scalar_t, V> op{static_cast<const scalar_t*>(logits),
                                                    static_cast<const scalar_t*>(target_logits),
                                                    mask,
                                                    C,
                                                    HW,
                                                    static_cast<acc_t*>(loss_px),
                                                    static_cast<acc_t*>(log_norm)};
      return launch_pixel_reduction(op, N * HW, reduction, loss, denom, workspace, stream);
    });
  });
}

cudaError_t soft_cross_entropy_backward(DType dtype, const void* grad_loss, const void* logits,
                                        const void* target_logits, const bool* mask, int64_t N, int64_t C, int64_t HW,
                                        Reduction reduction, const void* log_norm, const void* denom,
                                        void* grad_logits, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using acc_t = acc_type<scalar_t>;
    const void* grad_px = reduction == Reduction::None ? grad_loss : nullptr;
    const bool vec =
        can_vectorise(HW, pixel_vec_width<scalar_t>(), logits, target_logits, mask, log_norm, grad_px, grad_logits);
    return dispatch_vec<pixel_vec_width<scalar_t>()>(vec, [&](auto vec_tag) {
      constexpr int V = decltype(vec_tag)::value;
      const SoftCrossEntropyBackward<scalar_t, V> op{
          GradScale<acc_t>{static_cast<const acc_t*>(grad_loss), static_cast<const acc_t*>(denom), reduction},
          static_cast<const scalar_t*>(logits),
          static_cast<const scalar_t*>(target_logits),
          mask,
          C,
          HW,
          static_cast<const acc_t*>(log_norm),
          static_cast<scalar_t*>(grad_logits)};
      return launch_pixel_map(op, N * HW, stream);
    });
  });
}

}  // namespace xtc::cuda
