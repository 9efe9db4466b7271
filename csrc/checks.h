// Argument validation shared by every kernel of every op: the CPU kernels, the CUDA glue and the Meta
// (fake-tensor) kernels call the same function per op, before touching memory. The checks work on
// symbolic shapes (sym_sizes), so the Meta kernels serve torch.compile(dynamic=True) without
// specialising a dimension. Errors: ValueError (shape, value), TypeError (dtype), RuntimeError
// (device), each naming the argument.
//
// Shape conventions (PyTorch's): an input has a class/channel dimension `cdim` (1, or 0 for a 1-D
// input; cosine_similarity_loss takes it as `dim`); the other dimensions are the pixels. Seen as
// [N, C, P] with N = prod(shape[:cdim]), C = shape[cdim], P = prod(shape[cdim+1:]) (the memory layout
// of a contiguous tensor), pixel p = n * P + q. A per-pixel tensor (target, mask, saved normaliser,
// reduction="none" loss) has the pixel shape, shape[:cdim] + shape[cdim+1:]; a mask may also keep the
// class dimension with size 1.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string_view>

namespace xtc {

using OptTensor = std::optional<at::Tensor>;

enum class Reduction { None, Mean, Sum };

Reduction parse_reduction(std::string_view reduction, const char* op);

struct Layout {
  int64_t cdim = 0;                // class/channel dimension (wrapped)
  c10::SymDimVector pixel_shape;   // the input's shape without cdim
  c10::SymInt N, C, P;             // the [N, C, P] view

  // Concrete sizes, for kernels on real tensors.
  int64_t n() const { return N.expect_int(); }
  int64_t c() const { return C.expect_int(); }
  int64_t p() const { return P.expect_int(); }
};

// The validated arguments of one loss call.
struct LossInfo {
  Reduction red = Reduction::Mean;
  Layout layout;
  c10::SymDimVector none_shape;  // shape of the reduction="none" loss (pixel shape; input shape for L1)
};

// Loss dtype: float64 for float64 inputs, float32 otherwise.
inline at::ScalarType loss_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

LossInfo check_masked_cross_entropy(const at::Tensor& logits, const at::Tensor& target, const OptTensor& weight,
                                    int64_t ignore_index, double label_smoothing, std::string_view reduction);
LossInfo check_soft_cross_entropy(const at::Tensor& logits, const at::Tensor& target_logits, const OptTensor& mask,
                                  std::string_view reduction);
LossInfo check_masked_l1_loss(const at::Tensor& pred, const at::Tensor& target, const OptTensor& mask,
                              std::optional<double> invalid_value, std::string_view reduction);
LossInfo check_cosine_similarity_loss(const at::Tensor& a, const at::Tensor& b, const OptTensor& mask, double eps,
                                      std::string_view reduction, int64_t dim);
void check_sigmoid_gate(const at::Tensor& x, const at::Tensor& gate_logits);
void check_sigmoid_gate_bwd(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& gate_logits);

// The extra arguments of a loss backward: grad_loss (a scalar, or none_shape for reduction="none"),
// the saved denominator (a scalar) and, for the cross-entropies, the saved per-pixel normaliser.
void check_loss_backward(const LossInfo& info, const char* op, const at::Tensor& input, const at::Tensor& grad_loss,
                         const at::Tensor& denom, const at::Tensor* saved_per_pixel);

// A mask as the kernels read it: bool, contiguous (the [N,1,...] and [N,...] forms share that layout).
OptTensor kernel_mask(const OptTensor& mask);

// t with the strides of `like` (a non-overlapping, dense tensor of t's shape, e.g. at::empty_like(x)):
// t itself when it already has them, else a copy in that layout. Elementwise kernels then run over
// the raw memory of all their operands in the same order.
at::Tensor dense_like(const at::Tensor& t, const at::Tensor& like);

// True when t is one value broadcast to every element (all strides 0, e.g. the gradient of out.sum()).
bool is_broadcast_scalar(const at::Tensor& t);

}  // namespace xtc

// Registers the kernels of the ten device-dispatched ops, functions named like the ops in the current
// scope (the Meta kernels in meta.cpp, the CUDA glue in cuda_ops.cpp; the CPU kernels register per file).
#define XTC_REGISTER_KERNELS(m)                                               \
  m.impl("masked_cross_entropy_fwd", &masked_cross_entropy_fwd);              \
  m.impl("masked_cross_entropy_bwd", &masked_cross_entropy_bwd);              \
  m.impl("soft_cross_entropy_fwd", &soft_cross_entropy_fwd);                  \
  m.impl("soft_cross_entropy_bwd", &soft_cross_entropy_bwd);                  \
  m.impl("masked_l1_loss_fwd", &masked_l1_loss_fwd);                          \
  m.impl("masked_l1_loss_bwd", &masked_l1_loss_bwd);                          \
  m.impl("cosine_similarity_loss_fwd", &cosine_similarity_loss_fwd);          \
  m.impl("cosine_similarity_loss_bwd", &cosine_similarity_loss_bwd);          \
  m.impl("sigmoid_gate", &sigmoid_gate);                                      \
  m.impl("sigmoid_gate_bwd", &sigmoid_gate_bwd)
