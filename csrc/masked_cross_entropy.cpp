// masked_cross_entropy: CPU kernels. The forward saves log_norm - max per pixel (bounded by log C, so exact to
// fp32 rounding even for huge logits); the backward recomputes the max and the softmax from it.
#include "common.h"

#include <atomic>
#include <limits>

#include <torch/library.h>

namespace xtc {
namespace {

constexpr const char* kOp = "masked_cross_entropy";

void check_target(const at::Tensor& logits, const at::Tensor& target) {
  check_float_input(logits, kOp, "logits", 4);
  TORCH_CHECK_VALUE(logits.size(1) >= 1, kOp, ": logits must have at least one class, got shape ", logits.sizes());
  check_pixel_map(target, logits, kOp, "target");
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong || target.scalar_type() == at::kByte, kOp,
                   ": target must be int64 or uint8 class indices, got ", target.scalar_type());
}

// Calls f with a value of the target's index type (int64 or uint8): no conversion copy of the labels.
template <typename F>
void dispatch_target(const at::Tensor& target, const F& f) {
  if (target.scalar_type() == at::kLong) {
    f(int64_t{});
  } else {
    f(uint8_t{});
  }
}

template <typename index_t>
bool is_ignored(index_t t, int64_t ignore_index) {
  return static_cast<int64_t>(t) == ignore_index;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& logits_in, const at::Tensor& target_in,
                                                           int64_t ignore_index, c10::string_view reduction) {
  check_target(logits_in, target_in);
  const Reduction red = parse_reduction(reduction, kOp);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const int64_t N = logits.size(0), C = logits.size(1), HW = logits.size(2) * logits.size(3);
  const auto opts = logits.options().dtype(loss_dtype(logits));
  at::Tensor log_norm = at::empty({N, logits.size(2), logits.size(3)}, opts);
  at::Tensor loss = red == Reduction::None ? at::empty_like(log_norm) : at::empty({}, opts);
  at::Tensor denom = at::empty({}, opts);
  std::vector<double> part_loss(num_pixel_blocks(N, HW)), part_count(part_loss.size());
  std::atomic<int64_t> bad_label{std::numeric_limits<int64_t>::min()};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "masked_cross_entropy_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_target(target, [&](auto tag) {
      using index_t = decltype(tag);
      const scalar_t* z = logits.const_data_ptr<scalar_t>();
      const index_t* y = target.const_data_ptr<index_t>();
      acc_t* log_norm_p = log_norm.data_ptr<acc_t>();
      acc_t* loss_px = red == Reduction::None ? loss.data_ptr<acc_t>() : nullptr;
      for_each_pixel_block(N, HW, [&](const PixelBlock& b) {
        const int64_t px = b.n * HW + b.begin;
        const scalar_t* zb = z + b.n * C * HW + b.begin;
        acc_t m[kPixelBlock];
        block_log_norm(zb, C, HW, b.size(), m, log_norm_p + px);
        acc_t sum = 0, count = 0;
        for (int64_t i = 0; i < b.size(); ++i) {
          const index_t t = y[px + i];
          acc_t l = 0;
          if (!is_ignored(t, ignore_index)) {
            const int64_t k = static_cast<int64_t>(t);
            if (k < 0 || k >= C) {
              bad_label.store(k);
            } else {
              l = log_norm_p[px + i] + (m[i] - static_cast<acc_t>(zb[k * HW + i]));
              count += 1;
            }
          }
          sum += l;
          if (loss_px) loss_px[px + i] = l;
        }
        part_loss[b.index] = sum;
        part_count[b.index] = count;
      });
    });
  });
  const int64_t bad = bad_label.load();
  TORCH_CHECK_VALUE(bad == std::numeric_limits<int64_t>::min(), kOp, ": target contains class index ", bad,
                    ", outside [0, ", C, ") and not ignore_index (", ignore_index, ")");
  finish_reduction(red, ordered_sum(part_loss), ordered_sum(part_count), loss, denom);
  return {loss, log_norm, denom};
}

at::Tensor backward_cpu(const at::Tensor& grad_loss_in, const at::Tensor& logits_in, const at::Tensor& target_in,
                        const at::Tensor& log_norm_in, const at::Tensor& denom, int64_t ignore_index,
                        c10::string_view reduction) {
  check_target(logits_in, target_in);
  const Reduction red = parse_reduction(reduction, kOp);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor log_norm = log_norm_in.to(loss_dtype(logits)).contiguous();
  const at::Tensor grad_loss = prepare_grad_loss(grad_loss_in, logits, red, log_norm.sizes(), kOp);
  const int64_t N = logits.size(0), C = logits.size(1), HW = logits.size(2) * logits.size(3);
  at::Tensor grad = at::empty_like(logits, at::MemoryFormat::Contiguous);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "masked_cross_entropy_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_target(target, [&](auto tag) {
      using index_t = decltype(tag);
      const scalar_t* z = logits.const_data_ptr<scalar_t>();
      const index_t* y = target.const_data_ptr<index_t>();
      const acc_t* log_norm_p = log_norm.const_data_ptr<acc_t>();
      scalar_t* g = grad.data_ptr<scalar_t>();
      const GradScale<acc_t> scale(grad_loss, denom, red);
      for_each_pixel_block(N, HW, [&](const PixelBlock& b) {
        const int64_t px = b.n * HW + b.begin, L = b.size();
        const scalar_t* zb = z + b.n * C * HW + b.begin;
        scalar_t* gb = g + b.n * C * HW + b.begin;
        acc_t m[kPixelBlock], s[kPixelBlock], p[kPixelBlock];
        block_max(zb, C, HW, L, m);
        scale.fill(px, s, L);
        for (int64_t i = 0; i < L; ++i) {
          const int64_t k = static_cast<int64_t>(y[px + i]);
          if (is_ignored(y[px + i], ignore_index) || k < 0 || k >= C) s[i] = 0;
        }
        for (int64_t c = 0; c < C; ++c) {
          row_softmax(zb + c * HW, m, log_norm_p + px, p, L);
          row_scaled_store(p, s, gb + c * HW, L);
        }
        for (int64_t i = 0; i < L; ++i) {
          if (s[i] == acc_t(0)) continue;
          const int64_t k = static_cast<int64_t>(y[px + i]);
          const acc_t pk = vexp((static_cast<acc_t>(zb[k * HW + i]) - m[i]) - log_norm_p[px + i]);
          gb[k * HW + i] = static_cast<scalar_t>(s[i] * (pk - acc_t(1)));
        }
      });
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(xtc_ext, CPU, m) {
  m.impl("masked_cross_entropy_fwd", &forward_cpu);
  m.impl("masked_cross_entropy_bwd", &backward_cpu);
}

}  // namespace xtc
