// sigmoid_gate: CPU kernels of out = x * sigmoid(gate_logits), elementwise (MT-CP coherence fusion gates).
// Backward: grad_x = grad_out * s, grad_gate = grad_out * x * s * (1 - s), s = sigmoid(gate_logits).
#include "common.h"

#include <torch/library.h>

namespace xtc {
namespace {

constexpr const char* kOp = "sigmoid_gate";
constexpr int64_t kGrain = 16384;

void check_inputs(const at::Tensor& x, const at::Tensor& gate) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), kOp, ": x must be floating point, got ", x.scalar_type());
  check_same(x, gate, kOp, "x", "gate_logits");
}

template <typename acc_t>
inline acc_t sigmoid(acc_t g) {
  return acc_t(1) / (acc_t(1) + vexp(-g));
}

template <typename scalar_t, typename acc_t>
inline void row_gate(const scalar_t* __restrict x, const scalar_t* __restrict g, scalar_t* __restrict out,
                     int64_t L) {
  for (int64_t i = 0; i < L; ++i) {
    out[i] = static_cast<scalar_t>(static_cast<acc_t>(x[i]) * sigmoid(static_cast<acc_t>(g[i])));
  }
}

template <typename scalar_t, typename acc_t>
inline void row_gate_grad(const scalar_t* __restrict go, const scalar_t* __restrict x, const scalar_t* __restrict g,
                          scalar_t* __restrict gx, scalar_t* __restrict gg, int64_t L) {
  for (int64_t i = 0; i < L; ++i) {
    const acc_t s = sigmoid(static_cast<acc_t>(g[i]));
    const acc_t d = static_cast<acc_t>(go[i]);
    gx[i] = static_cast<scalar_t>(d * s);
    gg[i] = static_cast<scalar_t>(d * static_cast<acc_t>(x[i]) * s * (acc_t(1) - s));
  }
}

at::Tensor forward_cpu(const at::Tensor& x_in, const at::Tensor& gate_in) {
  check_inputs(x_in, gate_in);
  const at::Tensor x = x_in.contiguous(), gate = gate_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sigmoid_gate", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = gate.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    parallel_for_isa(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      row_gate<scalar_t, acc_t>(xp + begin, gp + begin, op + begin, end - begin);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                const at::Tensor& gate_in) {
  check_inputs(x_in, gate_in);
  check_same(x_in, grad_out_in, kOp, "x", "grad_out");
  const at::Tensor x = x_in.contiguous(), gate = gate_in.contiguous(), grad_out = grad_out_in.contiguous();
  at::Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_gate = at::empty_like(x, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sigmoid_gate_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gop = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = gate.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    scalar_t* ggp = grad_gate.data_ptr<scalar_t>();
    parallel_for_isa(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      row_gate_grad<scalar_t, acc_t>(gop + begin, xp + begin, gp + begin, gxp + begin, ggp + begin, end - begin);
    });
  });
  return {grad_x, grad_gate};
}

}  // namespace

TORCH_LIBRARY_IMPL(xtc_ext, CPU, m) {
  m.impl("sigmoid_gate", &forward_cpu);
  m.impl("sigmoid_gate_bwd", &backward_cpu);
}

}  // namespace xtc
