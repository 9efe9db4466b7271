// sigmoid_gate: CUDA kernels, elementwise over numel elements (fp32 math for the half types):
//   out = x * s, s = sigmoid(gate);  grad_x = grad_out * s, grad_gate = grad_out * x * s * (1 - s),
// as the CPU kernels: with e = exp(-|g|) = p * 2^k and d = 1 + e, s = 1 / d (g >= 0) or e / d (g < 0)
// and s (1 - s) = e / d^2, every product with e formed as ldexp(t * p, k): exact to one rounding
// down to the smallest subnormal (no overflow of exp(-g), no loss of bits in a subnormal s).
// Each thread takes 16 bytes of every operand (one vector access) when all pointers are 16-byte
// aligned; the last, partial group falls back to scalar accesses.
#include "cuda_common.cuh"

namespace xtc::cuda {
namespace {

XTC_HD float gate_rint(float x) { return rintf(x); }
XTC_HD double gate_rint(double x) { return rint(x); }
XTC_HD float gate_ldexp(float x, int k) { return ldexpf(x, k); }
XTC_HD double gate_ldexp(double x, int k) { return ldexp(x, k); }

// ln 2 = hi + lo with hi short enough that kf * hi is exact, and the lower clamp of the exponent argument
// (exp of it times the largest finite value is below the smallest subnormal).
template <typename acc_t>
struct GateConst;
template <>
struct GateConst<float> {
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f, min_arg = -200.0f;
  static constexpr float max_finite = 3.40282347e+38f;
};
template <>
struct GateConst<double> {
  static constexpr double ln2_hi = 0.6931471803691238, ln2_lo = 1.9082149292705877e-10, min_arg = -1500.0;
  static constexpr double max_finite = 1.7976931348623157e+308;
};

// exp(-|g|) = p * 2^k and d = 1 + exp(-|g|).
template <typename acc_t>
struct GateExp {
  acc_t p, d;
  int k;
  bool positive;

  XTC_HD explicit GateExp(acc_t g) {
    using K = GateConst<acc_t>;
    acc_t y = -acc_abs(g);
    y = y < K::min_arg ? K::min_arg : y;
    const acc_t kf = gate_rint(y * acc_t(1.4426950408889634));
    p = acc_exp((y - kf * K::ln2_hi) - kf * K::ln2_lo);
    k = static_cast<int>(kf);
    d = acc_t(1) + gate_ldexp(p, k);
    positive = g >= acc_t(0);
  }
  // t * sigmoid(g)
  XTC_HD acc_t times_s(acc_t t) const { return positive ? t / d : mul_pow2(t, p / d, k); }
  // t * u * sigmoid(g) * (1 - sigmoid(g)) = t * q * u * 2^k, q = p / d^2 <= 1.42: where t * q overflows
  // (|t| above ~2.4e38 in fp32), t is halved first (exactly) and the scale doubled, as the CPU kernel.
  XTC_HD acc_t times_ds(acc_t t, acc_t u) const {
    const acc_t q = p / (d * d), tq = t * q;
    return acc_abs(tq) <= GateConst<acc_t>::max_finite ? mul_pow2(tq, u, k) : mul_pow2((t * acc_t(0.5)) * q, u, k + 1);
  }

  // a * b * 2^k with no intermediate overflow: the scaling goes first where a * b would overflow.
  XTC_HD static acc_t mul_pow2(acc_t a, acc_t b, int k) {
    const acc_t ab = a * b;
    return acc_abs(ab) <= GateConst<acc_t>::max_finite ? gate_ldexp(ab, k) : gate_ldexp(a, k) * b;
  }
};

template <typename scalar_t, int VEC>
struct GateForward {
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = VEC;

  const scalar_t* x;
  const scalar_t* gate;
  int64_t numel;
  scalar_t* out;

  template <int W>
  XTC_HD void apply(int64_t i0) const {
    acc_t vx[W], vg[W];
    load_acc<W>(x + i0, vx);
    load_acc<W>(gate + i0, vg);
#pragma unroll
    for (int i = 0; i < W; ++i) vx[i] = GateExp<acc_t>(vg[i]).times_s(vx[i]);
    store_acc<W>(out + i0, vx);
  }

  XTC_HD void operator()(int64_t i0) const {
    if (i0 + VEC <= numel) {
      apply<VEC>(i0);
    } else {
      for (int64_t i = i0; i < numel; ++i) apply<1>(i);
    }
  }
};

template <typename scalar_t, int VEC>
struct GateBackward {
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = VEC;

  const scalar_t* grad_out;
  bool grad_out_is_scalar;  // grad_out[0] for every element
  const scalar_t* x;
  const scalar_t* gate;
  int64_t numel;
  scalar_t* grad_x;     // either may be nullptr
  scalar_t* grad_gate;

  template <int W>
  XTC_HD void apply(int64_t i0) const {
    acc_t go[W], vg[W], out[W];
    if (grad_out_is_scalar) {
      const acc_t g0 = Scalar<scalar_t>::to_acc(grad_out[0]);
#pragma unroll
      for (int i = 0; i < W; ++i) go[i] = g0;
    } else {
      load_acc<W>(grad_out + i0, go);
    }
    load_acc<W>(gate + i0, vg);
    if (grad_x) {
#pragma unroll
      for (int i = 0; i < W; ++i) out[i] = GateExp<acc_t>(vg[i]).times_s(go[i]);
      store_acc<W>(grad_x + i0, out);
    }
    if (grad_gate) {
      acc_t vx[W];
      load_acc<W>(x + i0, vx);
#pragma unroll
      for (int i = 0; i < W; ++i) out[i] = GateExp<acc_t>(vg[i]).times_ds(go[i], vx[i]);
      store_acc<W>(grad_gate + i0, out);
    }
  }

  XTC_HD void operator()(int64_t i0) const {
    if (i0 + VEC <= numel) {
      apply<VEC>(i0);
    } else {
      for (int64_t i = i0; i < numel; ++i) apply<1>(i);
    }
  }
};

}  // namespace

cudaError_t sigmoid_gate_forward(DType dtype, const void* x, const void* gate, int64_t numel, void* out,
                                 cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    const bool vec = all_aligned16(x, gate, out);
    return dispatch_vec<vec_width<scalar_t>()>(vec, [&](auto vec_tag) {
      constexpr int V = decltype(vec_tag)::value;
      const GateForward<scalar_t, V> op{static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(gate), numel,
                                        static_cast<scalar_t*>(out)};
      return launch_pixel_map(op, numel, stream);
    });
  });
}

cudaError_t sigmoid_gate_backward(DType dtype, const void* grad_out, bool grad_out_is_scalar, const void* x,
                                  const void* gate, int64_t numel, void* grad_x, void* grad_gate,
                                  cudaStream_t stream) {
  if (!grad_x && !grad_gate) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    const bool vec = all_aligned16(grad_out_is_scalar ? nullptr : grad_out, x, gate, grad_x, grad_gate);
    return dispatch_vec<vec_width<scalar_t>()>(vec, [&](auto vec_tag) {
      constexpr int V = decltype(vec_tag)::value;
      const GateBackward<scalar_t, V> op{static_cast<const scalar_t*>(grad_out),
                                         grad_out_is_scalar,
                                         static_cast<const scalar_t*>(x),
                                         static_cast<const scalar_t*>(gate),
                                         numel,
                                         static_cast<scalar_t*>(grad_x),
                                         static_cast<scalar_t*>(grad_gate)};
      return launch_pixel_map(op, numel, stream);
    });
  });
}

}  // namespace xtc::cuda
