// Shared pieces of the CPU kernels: a vectorisable exp, a deterministic blocked loop over the pixels of
// an [N, C, P] tensor (see checks.h for the shape conventions), and the reduction helpers.
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
#include <type_traits>
#include <vector>

#include "checks.h"

namespace xtc {

// exp for the softmax inner loops: Cephes expf (range reduction by ln 2, degree-6 polynomial),
// written without calls or branches so the compiler vectorises the loops that use it.
// exp_poly(x, kf): x = kf ln 2 + r, returns exp(r) in [0.7, 1.42] (kf an integer-valued float).
inline float exp_poly(float x, float& kf) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  kf = (x * 1.44269504088896341f + kMagic) - kMagic;
  const float r = (x - kf * 0.693359375f) + kf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * (r * r) + r + 1.0f;
}

// Max relative error ~2 ulp on [-87, 88]; inputs are clamped to that range (exp(-87) ~ 1.6e-38).
inline float vexp(float x) {
  float kf;
  const float p = exp_poly(std::min(std::max(x, -87.0f), 88.0f), kf);
  return p * std::bit_cast<float>((static_cast<int32_t>(kf) + 127) << 23);
}
inline double vexp(double x) { return std::exp(x); }

// exp(y) = p * 2^k for y <= 0 over the whole range (no clamp of the result to the normal floats):
// p in [0.7, 1.42], k an integer that may lie far below the exponent range, so that t * exp(y) can be
// formed as scale_pow2(t * p, k) with one final rounding. y is clamped to [-200, 0] (fp32: exp(-200)
// times the largest float is below the smallest subnormal) or [-1500, 0] (fp64).
inline void vexp_parts(float y, float& p, int32_t& k) {
  float kf;
  p = exp_poly(std::min(std::max(y, -200.0f), 0.0f), kf);
  k = std::min(std::max(static_cast<int32_t>(kf), int32_t{-400}), int32_t{0});
}
inline void vexp_parts(double y, double& p, int32_t& k) {
  y = std::min(std::max(y, -1500.0), 0.0);
  const double kf = std::nearbyint(y * 1.4426950408889634);
  p = std::exp((y - kf * 0.6931471803691238) - kf * 1.9082149292705877e-10);
  k = static_cast<int32_t>(kf);
}

// 2^k for k in the normal exponent range of the type.
inline float pow2(float, int32_t k) { return std::bit_cast<float>(static_cast<uint32_t>(k + 127) << 23); }
inline double pow2(double, int32_t k) { return std::bit_cast<double>(static_cast<uint64_t>(k + 1023) << 52); }

// t * 2^k for k in [-400, 1] (fp32) or [-3000, 1] (fp64), as three exact power-of-two factors.
template <typename acc_t>
inline acc_t scale_pow2(acc_t t, int32_t k) {
  constexpr int32_t kMin = std::is_same_v<acc_t, float> ? -126 : -1022;
  const int32_t k1 = std::max(k, kMin);
  const int32_t k2 = std::max(k - k1, kMin);
  return t * pow2(t, k1) * pow2(t, k2) * pow2(t, k - k1 - k2);
}


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

// out[i] = s[i] * (a[i] - b[i]), exactly 0 where s[i] = 0 (masked pixels: NaN or inf there never leaks)
template <typename scalar_t, typename acc_t>
inline void row_scaled_diff(const acc_t* __restrict a, const acc_t* __restrict b, const acc_t* __restrict s,
                            scalar_t* __restrict out, int64_t L) {
  for (int64_t i = 0; i < L; ++i) out[i] = static_cast<scalar_t>(s[i] != acc_t(0) ? s[i] * (a[i] - b[i]) : acc_t(0));
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
// denom = the number of valid pixels (elements for L1), or their summed class weight, as computed (it may
// be negative with negative class weights); a mean over a zero denominator is 0 (nothing valid, or
// weights summing to 0), and so is its gradient.
inline void finish_reduction(Reduction red, double sum, double count, at::Tensor& loss, at::Tensor& denom) {
  denom.fill_(count);
  if (red == Reduction::Mean) loss.fill_(count != 0 ? sum / count : 0.0);
  if (red == Reduction::Sum) loss.fill_(sum);
}

// The upstream gradient as the kernels read it, in the loss dtype: one value (mean / sum, or a value
// broadcast to every pixel, e.g. the gradient of out.sum() for reduction "none", read without copying
// it out), or contiguous per-pixel values.
struct GradLoss {
  at::Tensor values;
  bool per_pixel;
};

inline GradLoss prepare_grad_loss(const at::Tensor& grad_loss, const at::Tensor& input, Reduction red) {
  const at::ScalarType dt = loss_dtype(input);
  if (red == Reduction::None && !is_broadcast_scalar(grad_loss)) return {grad_loss.to(dt).contiguous(), true};
  const at::Tensor one = red == Reduction::None ? grad_loss.as_strided({}, {}) : grad_loss;
  return {one.to(dt), false};
}

// Per-pixel upstream-gradient scale of the backward: g / denom for mean (0 when denom is 0), g for sum
// or a broadcast value, g[p] for per-pixel values.
template <typename acc_t>
struct GradScale {
  const acc_t* per_pixel = nullptr;  // contiguous, indexed like the loss output
  acc_t scalar = 0;

  GradScale(const GradLoss& grad, const at::Tensor& denom, Reduction red) {
    if (grad.per_pixel) {
      per_pixel = grad.values.const_data_ptr<acc_t>();
      return;
    }
    scalar = grad.values.item<acc_t>();
    if (red == Reduction::Mean) {
      const acc_t d = denom.item<acc_t>();
      scalar = d != acc_t(0) ? scalar / d : acc_t(0);
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

}  // namespace xtc
