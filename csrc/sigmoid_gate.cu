// sigmoid_gate: CUDA kernels, elementwise over numel elements (fp32 math for the half types):
//   out = x * s, s = sigmoid(gate) = 1 / (1 + exp(-gate));
//   grad_x = grad_out * s, grad_gate = grad_out * x * s * (1 - s).
// Each thread takes 16 bytes of every operand (one vector access) when all pointers are 16-byte
// aligned; the last, partial group falls back to scalar accesses.
#include "cuda_common.cuh"

namespace xtc::cuda {
namespace {

template <typename acc_t>
XTC_HD acc_t sigmoid(acc_t g) {
  return acc_t(1) / (acc_t(1) + acc_exp(-g));
}

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
    for (int i = 0; i < W; ++i) vx[i] *= sigmoid(vg[i]);
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
  const scalar_t* x;
  const scalar_t* gate;
  int64_t numel;
  scalar_t* grad_x;     // either may be nullptr
  scalar_t* grad_gate;

  template <int W>
  XTC_HD void apply(int64_t i0) const {
    acc_t go[W], vg[W], out[W];
    load_acc<W>(grad_out + i0, go);
    load_acc<W>(gate + i0, vg);
#pragma unroll
    for (int i = 0; i < W; ++i) vg[i] = sigmoid(vg[i]);
    if (grad_x) {
#pragma unroll
      for (int i = 0; i < W; ++i) out[i] = go[i] * vg[i];
      store_acc<W>(grad_x + i0, out);
    }
    if (grad_gate) {
      acc_t vx[W];
      load_acc<W>(x + i0, vx);
#pragma unroll
      for (int i = 0; i < W; ++i) out[i] = go[i] * vx[i] * vg[i] * (acc_t(1) - vg[i]);
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

cudaError_t sigmoid_gate_backward(DType dtype, const void* grad_out, const void* x, const void* gate, int64_t numel,
                                  void* grad_x, void* grad_gate, cudaStream_t stream) {
  if (!grad_x && !grad_gate) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto scalar_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    const bool vec = all_aligned16(grad_out, x, gate, grad_x, grad_gate);
    return dispatch_vec<vec_width<scalar_t>()>(vec, [&](auto vec_tag) {
      constexpr int V = decltype(vec_tag)::value;
      const GateBackward<scalar_t, V> op{static_cast<const scalar_t*>(grad_out),
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
