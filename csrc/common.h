// Shared pieces of the CPU kernels: argument checks, reduction parsing, a vectorisable exp,
// and a deterministic blocked loop over the pixels of an NCHW tensor.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace xtc {

enum class Reduction { None, Mean, Sum };

inline Reduction parse_reduction(std::string_view reduction, const char* op) {
  if (reduction == "mean") return Reduction::Mean;
  if (reduction == "sum") return Reduction::Sum;
  if (reduction == "none") return Reduction::None;
  TORCH_CHECK_VALUE(false, op, ": reduction must be 'none', 'mean' or 'sum', got '", reduction, "'");
}

// Floating tensor of rank `dim` on the CPU (the only device these kernels serve).
inline void check_float_input(const at::Tensor& t, const char* op, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must be a ", dim, "-D tensor, got shape ", t.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name,
                   " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name_a,
                       const char* name_b) {
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), op, ": ", name_b, " must have the shape of ", name_a, " ",
                    a.sizes(), ", got ", b.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), op, ": ", name_b, " must have the dtype of ", name_a,
                   " (", a.scalar_type(), "), got ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_b, " is on ", b.device(), " but ", name_a, " is on ",
              a.device());
}

// Per-pixel tensor [N,H,W] matching an NCHW reference on the same device.
inline void check_pixel_map(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 3 && t.size(0) == ref.size(0) && t.size(1) == ref.size(2) &&
                        t.size(2) == ref.size(3),
                    op, ": ", name, " must have shape [N,H,W] = [", ref.size(0), ", ", ref.size(2), ", ",
                    ref.size(3), "], got ", t.sizes());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but the input is on ",
              ref.device());
}

inline void check_mask(const std::optional<at::Tensor>& mask, const at::Tensor& ref, const char* op) {
  if (!mask) return;
  check_pixel_map(*mask, ref, op, "mask");
  TORCH_CHECK_TYPE(mask->scalar_type() == at::kBool, op, ": mask must be bool here, got ", mask->scalar_type());
}

// Loss dtype: float64 for float64 inputs (gradcheck), float32 otherwise.
inline at::ScalarType loss_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// exp for the softmax inner loops: Cephes expf (range reduction by ln 2, degree-6 polynomial),
// written without calls or branches so the compiler vectorises the loops that use it.
// Max relative error ~2 ulp on [-87, 88]; inputs are clamped to that range (exp(-87) ~ 1.6e-38).
inline float vexp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float k = (x * 1.44269504088896341f + kMagic) - kMagic;
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(k) + 127) << 23;
  return p * std::bit_cast<float>(e);
}
inline double vexp(double x) { return std::exp(x); }


struct PixelBlock {
  int64_t index, n, begin, end;
  int64_t size() const { return end - begin; }
};

// Pixels of image n in [begin, end) of its H*W plane form one block; blocks never cross images.
constexpr int64_t kPixelBlock = 256;

// Row helpers over L consecutive pixels of one channel plane. Plain loops over __restrict pointers
// with no calls or branches in the body, so the compiler vectorises them (with -fno-trapping-math).

template <typename scalar_t, typename acc_t>
inline void row_load(const scalar_t* __restrict x, acc_t* __restrict out, int64_t L) {
  for (int64_t i = 0; i < L; ++i) out[i] = static_cast<acc_t>(x[i]);
}

template <typename scalar_t, typename acc_t>
inline void row_max(const scalar_t* __restrict x, acc_t* __restrict m, int64_t L) {
  for (int64_t i = 0; i < L; ++i) {
    const acc_t v = static_cast<acc_t>(x[i]);
    m[i] = v > m[i] ? v : m[i];
  }
}

// s[i] += exp(x[i] - m[i])
template <typename scalar_t, typename acc_t>
inline void row_exp_sum(const scalar_t* __restrict x, const acc_t* __restrict m, acc_t* __restrict s, int64_t L) {
  for (int64_t i = 0; i < L; ++i) s[i] += vexp(static_cast<acc_t>(x[i]) - m[i]);
}

// out[i] = exp((x[i] - m[i]) - log_norm[i]): the softmax probability from the saved normaliser.
template <typename scalar_t, typename acc_t>
inline void row_softmax(const scalar_t* __restrict x, const acc_t* __restrict m, const acc_t* __restrict log_norm,
                        acc_t* __restrict out, int64_t L) {
  for (int64_t i = 0; i < L; ++i) out[i] = vexp((static_cast<acc_t>(x[i]) - m[i]) - log_norm[i]);
}

template <typename scalar_t, typename acc_t>
inline void row_store(const acc_t* __restrict v, scalar_t* __restrict out, int64_t L) {
  for (int64_t i = 0; i < L; ++i) out[i] = static_cast<scalar_t>(v[i]);
}

// out[i] = s[i] * (a[i] - b[i])
template <typename scalar_t, typename acc_t>
inline void row_scaled_diff(const acc_t* __restrict a, const acc_t* __restrict b, const acc_t* __restrict s,
                            scalar_t* __restrict out, int64_t L) {
  for (int64_t i = 0; i < L; ++i) out[i] = static_cast<scalar_t>(s[i] * (a[i] - b[i]));
}

// Per-pixel max over the C channels of a block of L pixels (x points at channel 0, stride HW).
template <typename scalar_t, typename acc_t>
void block_max(const scalar_t* x, int64_t C, int64_t HW, int64_t L, acc_t* m) {
  row_load(x, m, L);
  for (int64_t c = 1; c < C; ++c) row_max(x + c * HW, m, L);
}

// Per-pixel max m and log(sum_c exp(x_c - m)) over the C channels of a block of L pixels.
template <typename scalar_t, typename acc_t>
void block_log_norm(const scalar_t* x, int64_t C, int64_t HW, int64_t L, acc_t* m, acc_t* log_norm) {
  acc_t s[kPixelBlock];
  block_max(x, C, HW, L, m);
  for (int64_t i = 0; i < L; ++i) s[i] = 0;
  for (int64_t c = 0; c < C; ++c) row_exp_sum(x + c * HW, m, s, L);
  for (int64_t i = 0; i < L; ++i) log_norm[i] = std::log(s[i]);
}

inline int64_t num_pixel_blocks(int64_t N, int64_t HW) { return N * ((HW + kPixelBlock - 1) / kPixelBlock); }

// CPU instruction-set dispatch. The same kernel source is compiled twice: `call_isa_default` (the
// build's baseline, SSE2 on x86-64) and `call_isa_avx2` (AVX2 + FMA). `flatten` inlines the op's
// lambda and the row helpers into each, so their loops vectorise for that instruction set; the
// AVX2 copy runs when the processor has it. Results are deterministic on a given machine (FMA
// rounding differs slightly from the baseline build, well inside fp32 tolerance).
inline bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

template <typename Body>
__attribute__((flatten)) void call_isa_default(const Body& body, int64_t begin, int64_t end) {
  body(begin, end);
}

#if defined(__x86_64__) || defined(__i386__)
template <typename Body>
__attribute__((target("avx2,fma"), flatten)) void call_isa_avx2(const Body& body, int64_t begin, int64_t end) {
  body(begin, end);
}
#endif

// at::parallel_for whose chunks run the best compiled variant of body(begin, end).
template <typename Body>
void parallel_for_isa(int64_t begin, int64_t end, int64_t grain, const Body& body) {
  at::parallel_for(begin, end, grain, [&](int64_t b0, int64_t b1) {
#if defined(__x86_64__) || defined(__i386__)
    if (cpu_has_avx2_fma()) {
      call_isa_avx2(body, b0, b1);
      return;
    }
#endif
    call_isa_default(body, b0, b1);
  });
}

// Runs body(PixelBlock) over all blocks in parallel. The block partition depends only on the
// shape, so per-block partial sums added in block order are deterministic for any thread count.
template <typename Body>
void for_each_pixel_block(int64_t N, int64_t HW, const Body& body) {
  const int64_t per_image = (HW + kPixelBlock - 1) / kPixelBlock;
  parallel_for_isa(0, N * per_image, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / per_image;
      const int64_t begin = (b % per_image) * kPixelBlock;
      body(PixelBlock{b, n, begin, std::min(begin + kPixelBlock, HW)});
    }
  });
}

inline double ordered_sum(const std::vector<double>& parts) {
  double s = 0.0;
  for (double p : parts) s += p;
  return s;
}

// Writes the reduced loss (sum, or sum / denom for mean) and the denominator saved for the backward:
// denom = count (number of valid pixels, or their summed class weight) when positive, else 1, so
// a mean over nothing is 0.
inline void finish_reduction(Reduction red, double sum, double count, at::Tensor& loss, at::Tensor& denom) {
  const double d = count > 0 ? count : 1.0;
  denom.fill_(d);
  if (red == Reduction::Mean) loss.fill_(sum / d);
  if (red == Reduction::Sum) loss.fill_(sum);
}

// Per-pixel upstream-gradient scale of the backward: g / denom for mean, g for sum, g[p] for none.
template <typename acc_t>
struct GradScale {
  const acc_t* per_pixel = nullptr;  // reduction "none": contiguous, indexed like the loss output
  acc_t scalar = 0;

  GradScale(const at::Tensor& grad_loss, const at::Tensor& denom, Reduction red) {
    if (red == Reduction::None) {
      per_pixel = grad_loss.const_data_ptr<acc_t>();
    } else {
      scalar = grad_loss.item<acc_t>();
      if (red == Reduction::Mean) scalar /= denom.item<acc_t>();
    }
  }
  // s[i] = scale of loss element flat_begin + i, for i < L.
  void fill(int64_t flat_begin, acc_t* s, int64_t L) const {
    if (per_pixel) {
      row_load(per_pixel + flat_begin, s, L);
    } else {
      for (int64_t i = 0; i < L; ++i) s[i] = scalar;
    }
  }
};

// grad_loss in the loss dtype, contiguous, shaped like the forward's loss output.
inline at::Tensor prepare_grad_loss(const at::Tensor& grad_loss, const at::Tensor& input, Reduction red,
                                    at::IntArrayRef none_shape, const char* op) {
  if (red == Reduction::None) {
    TORCH_CHECK_VALUE(grad_loss.sizes() == none_shape, op, ": grad_loss must have shape ", none_shape, ", got ",
                      grad_loss.sizes());
  } else {
    TORCH_CHECK_VALUE(grad_loss.numel() == 1, op, ": grad_loss must be a scalar, got shape ", grad_loss.sizes());
  }
  return grad_loss.to(loss_dtype(input)).contiguous();
}

}  // namespace xtc
