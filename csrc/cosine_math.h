// Per-pixel math of cosine_similarity_loss shared by the CPU kernels and the CUDA kernels (plain C++,
// host and device). cos = <a, b> / (max(|a|, eps) max(|b|, eps)) without overflow or underflow:
// the kernels first form the plain sums aa = sum a_c^2, bb, ab; where aa and bb lie in a range in which
// squaring loses nothing (cos_sums_in_range) the cosine comes from them, else (|a| ~ 3e19 in fp32,
// whose square overflows; tiny or zero vectors, whose squares underflow) the pixel is recomputed with
// every channel divided by its largest magnitude, as hypot does (cos_scaled). Divisions are ordered so
// that no intermediate overflows: cos = (ab / Da) / Db, and the backward scales a by 1 / Da before any
// product with another small or large factor.
#pragma once

#include <math.h>

#include <cstdint>

#ifdef __CUDACC__
#define XTC_COS_HD __host__ __device__ __forceinline__
#else
#define XTC_COS_HD inline
#endif

namespace xtc {

template <typename acc_t>
struct CosTerms {
  acc_t cos;           // the cosine (eps rule)
  acc_t inv_a, inv_b;  // 1 / max(|a|, eps), 1 / max(|b|, eps) (representable even where |a| is not)
  bool a_big, b_big;   // |a| > eps, |b| > eps (else the norm is the constant eps)
};

// Squared norms in [lo, hi] are exact to rounding without scaling: finite, and far enough above the
// smallest normal number that squares below it (which lose bits) contribute nothing visible.
template <typename acc_t>
struct CosRange;
template <>
struct CosRange<float> {
  static constexpr float lo = 7.88860905e-31f;    // 2^-100
  static constexpr float hi = 3.40282347e+38f;    // largest float
};
template <>
struct CosRange<double> {
  static constexpr double lo = 1.1881676540067094e-271;  // 2^-900
  static constexpr double hi = 1.7976931348623157e+308;  // largest double
};

XTC_COS_HD float cos_sqrt(float x) { return sqrtf(x); }
XTC_COS_HD double cos_sqrt(double x) { return sqrt(x); }
XTC_COS_HD float cos_abs(float x) { return fabsf(x); }
XTC_COS_HD double cos_abs(double x) { return fabs(x); }

// max(n, eps), keeping a NaN norm NaN.
template <typename acc_t>
XTC_COS_HD acc_t cos_floor(acc_t n, acc_t eps) {
  return n < eps ? eps : n;
}

template <typename acc_t>
XTC_COS_HD bool cos_sums_in_range(acc_t aa, acc_t bb) {
  return aa >= CosRange<acc_t>::lo && aa <= CosRange<acc_t>::hi && bb >= CosRange<acc_t>::lo &&
         bb <= CosRange<acc_t>::hi;
}

template <typename acc_t>
XTC_COS_HD CosTerms<acc_t> cos_from_sums(acc_t aa, acc_t bb, acc_t ab, acc_t eps) {
  const acc_t na = cos_sqrt(aa), nb = cos_sqrt(bb);
  const acc_t da = cos_floor(na, eps), db = cos_floor(nb, eps);
  return {ab / da / db, acc_t(1) / da, acc_t(1) / db, na > eps, nb > eps};
}

// The pixel recomputed from its channels, a(c) and b(c) for c < C, each vector divided by its largest
// magnitude (a zero vector has norm 0 and cosine 0). A NaN or inf channel in either vector makes every
// term NaN (a_big, b_big set), so the whole pixel's loss and both gradients are NaN, as in PyTorch
// (docs/ops.md, "Values"); the kernels keep a zero-scale pixel's gradient exactly 0 all the same.
template <typename acc_t, typename LoadA, typename LoadB>
XTC_COS_HD CosTerms<acc_t> cos_scaled(const LoadA& a, const LoadB& b, int64_t C, acc_t eps) {
  acc_t sa = 0, sb = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t x = cos_abs(a(c)), y = cos_abs(b(c));
    sa = (x > sa || x != x) ? x : sa;
    sb = (y > sb || y != y) ? y : sb;
  }
  if (!(sa <= CosRange<acc_t>::hi && sb <= CosRange<acc_t>::hi)) {
    const acc_t nan = (sa + sb) * acc_t(0);  // inf * 0 or NaN * 0: NaN
    return {nan, nan, nan, true, true};
  }
  acc_t aa = 0, bb = 0, ab = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t x = sa > acc_t(0) ? a(c) / sa : acc_t(0);
    const acc_t y = sb > acc_t(0) ? b(c) / sb : acc_t(0);
    aa += x * x;
    bb += y * y;
    ab += x * y;
  }
  // sa / max(na, eps) and 1 / max(na, eps) without forming na where it matters: the norm itself may
  // exceed the largest float (inf) while its inverse is a representable (subnormal) number.
  const acc_t ra = cos_sqrt(aa), rb = cos_sqrt(bb);
  const bool a_big = sa * ra > eps, b_big = sb * rb > eps;
  const acc_t fa = a_big ? acc_t(1) / ra : sa / eps;
  const acc_t fb = b_big ? acc_t(1) / rb : sb / eps;
  const acc_t inv_a = a_big ? (acc_t(1) / sa) / ra : acc_t(1) / eps;
  const acc_t inv_b = b_big ? (acc_t(1) / sb) / rb : acc_t(1) / eps;
  return {ab * fa * fb, inv_a, inv_b, a_big, b_big};
}

}  // namespace xtc
