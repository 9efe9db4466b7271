// masked_l1_loss: CUDA kernels (semantics: csrc/masked_l1_loss.cpp and cuda_kernels.h).
// Element (n, c, hw) is valid when mask[n * HW + hw] (if a mask is given) and target != invalid_value
// (if has_invalid); the loss is |pred - target| where valid, else 0 (a select: NaN or inf in invalid
// elements never leaks), and the denominator counts valid elements. Each thread takes a group of
// pixels and loops over the channels, so the mask is read once per pixel.
#include "cuda_common.cuh"

namespace xtc::cuda {
namespace {

// Validity of the VEC elements of one channel row: pixel validity and target != invalid.
template <int VEC, typename acc_t>
XTC_HD void element_valid(const bool (&pixel_ok)[VEC], const acc_t (&t)[VEC], bool has_invalid,
                                              acc_t invalid, bool (&valid)[VEC]) {
#pragma unroll
  for (int i = 0; i < VEC; ++i) valid[i] = pixel_ok[i] && (!has_invalid || t[i] != invalid);
}

template <typename scalar_t, int VEC>
struct L1Forward {
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = VEC;

  const scalar_t* pred;    // [N, C, HW]
  const scalar_t* target;  // [N, C, HW]
  const bool* mask;        // [N, HW] or nullptr
  bool has_invalid;
  acc_t invalid;           // invalid_value rounded to scalar_t, as acc_t
  int64_t C, HW;
  acc_t* loss_el;          // [N, C, HW] for reduction none, else nullptr

  XTC_HD void operator()(int64_t p0, acc_t& loss_sum, acc_t& count_sum) const {
    const int64_t off = channel0_offset(p0, C, HW);
    bool pixel_ok[VEC];
    load_mask<VEC>(mask, p0, pixel_ok);
#pragma unroll 4
    for (int64_t c = 0; c < C; ++c) {
      acc_t p[VEC], t[VEC];
      load_acc<VEC>(pred + off + c * HW, p);
      load_acc<VEC>(target + off + c * HW, t);
      bool valid[VEC];
      element_valid<VEC>(pixel_ok, t, has_invalid, invalid, valid);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        p[i] = valid[i] ? acc_abs(p[i] - t[i]) : acc_t(0);
        loss_sum += p[i];
        count_sum += valid[i] ? acc_t(1) : acc_t(0);
      }
      if (loss_el) store_pack<VEC>(loss_el + off + c * HW, p);
    }
  }
};

template <typename scalar_t, int VEC>
struct L1Backward {
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = VEC;

  GradScale<acc_t> scale;  // per element for reduction none
  const scalar_t* pred;
  const scalar_t* target;
  const bool* mask;
  bool has_invalid;
  acc_t invalid;
  int64_t C, HW;
  scalar_t* grad;

  // grad = s * sign(pred - target) where valid (sign(0) = 0), else 0.
  XTC_HD void operator()(int64_t p0) const {
    const int64_t off = channel0_offset(p0, C, HW);
    bool pixel_ok[VEC];
    load_mask<VEC>(mask, p0, pixel_ok);
#pragma unroll 4
    for (int64_t c = 0; c < C; ++c) {
      const int64_t row = off + c * HW;
      acc_t p[VEC], t[VEC], s[VEC];
      load_acc<VEC>(pred + row, p);
      load_acc<VEC>(target + row, t);
      scale.template load<VEC>(row, s);
      bool valid[VEC];
      element_valid<VEC>(pixel_ok, t, has_invalid, invalid, valid);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const acc_t d = p[i] - t[i];
        const acc_t sign = d > acc_t(0) ? acc_t(1) : (d < acc_t(0) ? acc_t(-1) : acc_t(0));
        p[i] = valid[i] ? s[i] * sign : acc_t(0);
      }
      store_acc<VEC>(grad + row, p);
    }
  }
};

// invalid_value as the CPU kernel compares it: rounded to scalar_t (through float for the half types).
template <typename scalar_t>
acc_type<scalar_t> invalid_as_acc(double invalid_value) {
  using acc_t = acc_type<scalar_t>;
  return Scalar<scalar_t>::to_acc(Scalar<scalar_t>::from_acc(static_cast<acc_t>(invalid_value)));
}

}  // namespace

cudaError_t masked_l1_loss_forward(DType dtype, const void* pred, const void* target, const bool* mask,
                                   bool has_invalid, double invalid_value, int64_t N, int64_t C, int64_t HW,
                                   Reduction reduction, void* loss, void* denom, void* workspace,
                                   cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using acc_t = acc_type<scalar_t>;
    void* loss_el = reduction == Reduction::None ? loss : nullptr;
    const bool vec = can_vectorise(HW, pixel_vec_width<scalar_t>(), pred, target, mask, loss_el);
    return dispatch_vec<pixel_vec_width<scalar_t>()>(vec, [&](auto vec_tag) {
      constexpr int V = decltype(vec_tag)::value;
      const L1Forward<scalar_t, V> op{static_cast<const scalar_t*>(pred),
                                      static_cast<const scalar_t*>(target),
                                      mask,
                                      has_invalid,
                                      invalid_as_acc<scalar_t>(invalid_value),
                                      C,
                                      HW,
                                      static_cast<acc_t*>(loss_el)};
      return launch_pixel_reduction(op, N * HW, reduction, loss, denom, workspace, stream);
    });
  });
}

cudaError_t masked_l1_loss_backward(DType dtype, const void* grad_loss, const void* pred, const void* target,
                                    const bool* mask, bool has_invalid, double invalid_value, int64_t N, int64_t C,
                                    int64_t HW, Reduction reduction, const void* denom, void* grad_pred,
                                    cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using acc_t = acc_type<scalar_t>;
    const void* grad_el = reduction == Reduction::None ? grad_loss : nullptr;
    const bool vec = can_vectorise(HW, pixel_vec_width<scalar_t>(), pred, target, mask, grad_el, grad_pred);
    return dispatch_vec<pixel_vec_width<scalar_t>()>(vec, [&](auto vec_tag) {
      constexpr int V = decltype(vec_tag)::value;
      const L1Backward<scalar_t, V> op{
          GradScale<acc_t>{static_cast<const acc_t*>(grad_loss), static_cast<const acc_t*>(denom), reduction},
          static_cast<const scalar_t*>(pred),
          static_cast<const scalar_t*>(target),
          mask,
          has_invalid,
          invalid_as_acc<scalar_t>(invalid_value),
          C,
          HW,
          static_cast<scalar_t*>(grad_pred)};
      return launch_pixel_map(op, N * HW, stream);
    });
  });
}

}  // namespace xtc::cuda
