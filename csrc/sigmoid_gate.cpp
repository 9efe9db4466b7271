// sigmoid_gate: CPU kernels of out = x * sigmoid(gate_logits), elementwise (MT-CP coherence fusion gates).
// Pieces of 256 elements whose gates are all moderate (|g| <= 87 in fp32) use the plain vectorised formulas;
// the others the exact ones: with e = exp(-|g|) = p * 2^k (vexp_parts, no clamp of the result), d = 1 + e:
//   sigmoid(g) = 1 / d (g >= 0) or e / d (g < 0),  sigmoid(g) (1 - sigmoid(g)) = e / d^2,
// and every product with e is formed as scale_pow2(t * p, k) (the scaling first where t * p would
// overflow), so out, grad_x = grad_out * s and grad_gate = grad_out * x * s * (1 - s) are exact to a
// few roundings down to the smallest subnormal (x = 1e30, g = -100 gives 3.72e-14 in fp32, not the
// 6e-9 of a clamped exp).
// Layout: the output keeps x's memory format (channels_last stays channels_last); the kernels run over
// the raw memory of operands that share the output's dense strides (others are copied into that layout
// once); an upstream gradient that is one value broadcast everywhere (out.sum()) is read as that value.
#include "common.h"
#include "op_table.h"

#if XTC_WITH_CUDA
#include "cuda_glue.h"
#endif

#include <limits>

namespace xtc {
namespace {

// Argument validation: the one check of every kernel of this op (CPU, Meta, CUDA); checks.h.
void check_sigmoid_gate(const at::Tensor& x, const at::Tensor& gate_logits) {
  check_float(x, "sigmoid_gate", "x");
  check_same(gate_logits, x, "sigmoid_gate", "gate_logits", "x");
}

void check_sigmoid_gate_bwd(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& gate_logits) {
  check_sigmoid_gate(x, gate_logits);
  check_same(grad_out, x, "sigmoid_gate", "grad_out", "x");
}


constexpr int64_t kGrain = 16384;
constexpr int64_t kPiece = 256;  // elements whose gates decide together between the two formulas

// The plain formulas (e = vexp(-|g|)), exact while e is a normal number: |g| <= 87 (fp32), 700 (fp64).
template <typename acc_t>
struct GateFast {
  static constexpr acc_t kLimit = std::is_same_v<acc_t, float> ? acc_t(87) : acc_t(700);
  acc_t e, r;  // exp(-|g|), 1 / (1 + exp(-|g|)): one division per element
  bool positive;

  explicit GateFast(acc_t g) : e(vexp(-std::abs(g))), r(acc_t(1) / (acc_t(1) + e)), positive(g >= acc_t(0)) {}
  // t * sigmoid(g)
  acc_t times_s(acc_t t) const { return t * (positive ? r : e * r); }
  // t * u * sigmoid(g) * (1 - sigmoid(g)), the product of the large factors first unless it overflows
  acc_t times_ds(acc_t t, acc_t u) const {
    const acc_t ds = e * r * r, tu = t * u;
    return std::abs(tu) <= std::numeric_limits<acc_t>::max() ? tu * ds : (t * ds) * u;
  }
};

// The exact formulas for any gate: exp(-|g|) = p * 2^k, d = 1 + exp(-|g|).
template <typename acc_t>
struct GateExp {
  acc_t p, d;
  int32_t k;
  bool positive;

  explicit GateExp(acc_t g) {
    vexp_parts(-std::abs(g), p, k);
    d = acc_t(1) + p * pow2(p, std::max(k, std::is_same_v<acc_t, float> ? int32_t{-126} : int32_t{-1022}));
    positive = g >= acc_t(0);
  }
  // t * sigmoid(g)
  acc_t times_s(acc_t t) const { return positive ? t / d : mul_pow2(t, p / d, k); }
  // t * u * sigmoid(g) * (1 - sigmoid(g)) = t * q * u * 2^k, q = p / d^2 <= 1.42: where t * q overflows
  // (|t| above ~2.4e38 in fp32), t is halved first (exactly) and the scale doubled, so that no intermediate
  // overflows while the result is finite (docs/ops.md, "Values").
  acc_t times_ds(acc_t t, acc_t u) const {
    const acc_t q = p / (d * d), tq = t * q;
    return std::abs(tq) <= std::numeric_limits<acc_t>::max() ? mul_pow2(tq, u, k)
                                                              : mul_pow2((t * acc_t(0.5)) * q, u, k + 1);
  }

  // a * b * 2^k (k <= 1) with no intermediate overflow: the scaling goes first where a * b would overflow.
  static acc_t mul_pow2(acc_t a, acc_t b, int32_t k) {
    const acc_t ab = a * b;
    return std::abs(ab) <= std::numeric_limits<acc_t>::max() ? scale_pow2(ab, k) : scale_pow2(a, k) * b;
  }
};

template <typename T>
struct Tag {
  using type = T;
};

// body(Tag<Math>, offset, n) over pieces of kPiece elements: Math = GateFast where every gate of the piece
// allows it (vectorised, as cheap as x / (1 + exp(-g))), GateExp where one does not.
template <typename scalar_t, typename acc_t, typename Body>
inline void for_each_gate_piece(const scalar_t* __restrict g, int64_t L, const Body& body) {
  for (int64_t b = 0; b < L; b += kPiece) {
    const int64_t n = std::min(kPiece, L - b);
    int32_t large = 0;  // an OR reduction vectorises (a max reduction would not: NaN ordering)
    for (int64_t i = 0; i < n; ++i) large |= std::abs(static_cast<acc_t>(g[b + i])) > GateFast<acc_t>::kLimit;
    if (!large) {
      body(Tag<GateFast<acc_t>>{}, b, n);
    } else {
      body(Tag<GateExp<acc_t>>{}, b, n);
    }
  }
}

template <typename scalar_t, typename acc_t, typename Math>
inline void row_gate(const scalar_t* __restrict x, const scalar_t* __restrict g, scalar_t* __restrict out,
                     int64_t L) {
  for (int64_t i = 0; i < L; ++i) {
    const Math ge(static_cast<acc_t>(g[i]));
    out[i] = static_cast<scalar_t>(ge.times_s(static_cast<acc_t>(x[i])));
  }
}

// kScalarGrad: go points at one upstream value for every element.
template <typename scalar_t, typename acc_t, typename Math, bool kScalarGrad>
inline void row_gate_grad(const scalar_t* __restrict go, const scalar_t* __restrict x, const scalar_t* __restrict g,
                          scalar_t* __restrict gx, scalar_t* __restrict gg, int64_t L) {
  for (int64_t i = 0; i < L; ++i) {
    const Math ge(static_cast<acc_t>(g[i]));
    const acc_t d = static_cast<acc_t>(go[kScalarGrad ? 0 : i]);
    gx[i] = static_cast<scalar_t>(ge.times_s(d));
    gg[i] = static_cast<scalar_t>(ge.times_ds(d, static_cast<acc_t>(x[i])));
  }
}

}  // namespace

// CPU kernels (registered by ops.cpp from the op table).
namespace cpu {

at::Tensor sigmoid_gate(const at::Tensor& x_in, const at::Tensor& gate_in) {
  check_sigmoid_gate(x_in, gate_in);
  at::Tensor out = at::empty_like(x_in);
  const at::Tensor x = dense_like(x_in, out), gate = dense_like(gate_in, out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sigmoid_gate", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = gate.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    parallel_for_isa(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_gate_piece<scalar_t, acc_t>(gp + begin, end - begin, [&](auto tag, int64_t b, int64_t n) {
        using Math = typename decltype(tag)::type;
        row_gate<scalar_t, acc_t, Math>(xp + begin + b, gp + begin + b, op + begin + b, n);
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sigmoid_gate_bwd(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                    const at::Tensor& gate_in) {
  check_sigmoid_gate_bwd(grad_out_in, x_in, gate_in);
  at::Tensor grad_x = at::empty_like(x_in);
  at::Tensor grad_gate = at::empty_like(grad_x);
  const at::Tensor x = dense_like(x_in, grad_x), gate = dense_like(gate_in, grad_x);
  const bool scalar_grad = is_broadcast_scalar(grad_out_in);
  const at::Tensor grad_out = scalar_grad ? grad_out_in : dense_like(grad_out_in, grad_x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sigmoid_gate_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gop = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = gate.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    scalar_t* ggp = grad_gate.data_ptr<scalar_t>();
    parallel_for_isa(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_gate_piece<scalar_t, acc_t>(gp + begin, end - begin, [&](auto tag, int64_t b, int64_t n) {
        using Math = typename decltype(tag)::type;
        const int64_t o = begin + b;
        if (scalar_grad) {
          row_gate_grad<scalar_t, acc_t, Math, true>(gop, xp + o, gp + o, gxp + o, ggp + o, n);
        } else {
          row_gate_grad<scalar_t, acc_t, Math, false>(gop + o, xp + o, gp + o, gxp + o, ggp + o, n);
        }
      });
    });
  });
  return {grad_x, grad_gate};
}

}  // namespace cpu

// Meta (fake-tensor) kernels: the same check, outputs of the real kernels' shapes, dtypes and strides.
namespace meta {

Tensor sigmoid_gate(const Tensor& x, const Tensor& gate_logits) {
  check_sigmoid_gate(x, gate_logits);
  return at::empty_like(x);
}

Tensor2 sigmoid_gate_bwd(const Tensor& grad_out, const Tensor& x, const Tensor& gate_logits) {
  check_sigmoid_gate_bwd(grad_out, x, gate_logits);
  Tensor grad_x = at::empty_like(x);
  return {grad_x, at::empty_like(grad_x)};
}

}  // namespace meta

#if XTC_WITH_CUDA
// CUDA entry points: the glue around the launchers of sigmoid_gate.cu (cuda_glue.h).
namespace gpu {

constexpr const char* kGate = "sigmoid_gate";

Tensor sigmoid_gate(const Tensor& x_in, const Tensor& gate_in) {
  check_sigmoid_gate(x_in, gate_in);
  const CudaCall call(x_in, kGate, "x");
  Tensor out = at::empty_like(x_in);
  const Tensor x = dense_like(x_in, out), gate = dense_like(gate_in, out);
  C10_CUDA_CHECK(cuda::sigmoid_gate_forward(cuda_dtype(x, kGate), x.const_data_ptr(), gate.const_data_ptr(), x.numel(),
                                            out.data_ptr(), call.stream));
  return out;
}

std::tuple<Tensor, Tensor> sigmoid_gate_bwd(const Tensor& grad_out_in, const Tensor& x_in, const Tensor& gate_in) {
  check_sigmoid_gate_bwd(grad_out_in, x_in, gate_in);
  const CudaCall call(x_in, kGate, "x");
  Tensor grad_x = at::empty_like(x_in);
  Tensor grad_gate = at::empty_like(grad_x);
  const Tensor x = dense_like(x_in, grad_x), gate = dense_like(gate_in, grad_x);
  const bool scalar_grad = is_broadcast_scalar(grad_out_in);
  const Tensor grad_out = scalar_grad ? grad_out_in : dense_like(grad_out_in, grad_x);
  C10_CUDA_CHECK(cuda::sigmoid_gate_backward(cuda_dtype(x, kGate), grad_out.const_data_ptr(), scalar_grad,
                                             x.const_data_ptr(), gate.const_data_ptr(), x.numel(), grad_x.data_ptr(),
                                             grad_gate.data_ptr(), call.stream));
  return {grad_x, grad_gate};
}

}  // namespace gpu
#endif  // XTC_WITH_CUDA

}  // namespace xtc
