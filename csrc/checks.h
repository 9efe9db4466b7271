// Argument validation shared by every kernel of every op: the CPU kernels, the CUDA glue and the Meta
// (fake-tensor) kernels of an op (csrc/<op>.cpp) call the op's one check function, built from the helpers
// below, before touching memory. The checks work on
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

#include "op_table.h"

#include <optional>
#include <string_view>

namespace xtc {

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

// Helpers of the check functions; each error names the op `op` and the argument `name`.
// A float16/bfloat16/float32/float64 tensor (TypeError).
void check_float(const at::Tensor& t, const char* op, const char* name);
// t on ref's device (RuntimeError).
void check_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name, const char* ref_name);
// Same shape, dtype and device as ref.
void check_same(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name, const char* ref_name);
// The [N, C, P] view of x with class/channel dimension cdim (a 0-D x is one pixel of one channel);
// need_class: x must have a class dimension of size >= 1.
Layout make_layout(const at::Tensor& x, int64_t cdim, const char* op, const char* name, bool need_class);
// PyTorch's class dimension: 1, or 0 for a 1-D input.
int64_t default_cdim(const at::Tensor& x);
// t has the pixel shape of layout l (ref's shape without dim l.cdim), on ref's device.
void check_pixel_shape(const at::Tensor& t, const Layout& l, const at::Tensor& ref, const char* op, const char* name,
                       const char* ref_name);
// Per-pixel mask (if any): the pixel shape, or the input's shape with size 1 in the class dimension; bool,
// integer or one of the four float dtypes (nonzero = valid).
void check_mask(const OptTensor& mask, const Layout& l, const at::Tensor& ref, const char* op, const char* ref_name);

// The extra arguments of a loss backward: grad_loss (a scalar, or none_shape for reduction="none"),
// the saved denominator (a scalar) and, for the cross-entropies, the saved per-pixel normaliser.
void check_loss_backward(const LossInfo& info, const char* op, const at::Tensor& input, const at::Tensor& grad_loss,
                         const at::Tensor& denom, const at::Tensor* saved_per_pixel);

// A mask as the kernels read it: bool, contiguous (the [N,1,...] and [N,...] forms share that layout).
OptTensor kernel_mask(const OptTensor& mask);

// Outputs of a loss forward (real or Meta): (loss, denom) in the loss dtype, the loss of none_shape for
// reduction "none", else 0-D; ce_outputs adds the per-pixel lse_minus_max of the two cross-entropies.
Tensor2 loss_outputs(const LossInfo& info, const at::Tensor& input);
Tensor3 ce_outputs(const LossInfo& info, const at::Tensor& logits);

// t with the strides of `like` (a non-overlapping, dense tensor of t's shape, e.g. at::empty_like(x)):
// t itself when it already has them, else a copy in that layout. Elementwise kernels then run over
// the raw memory of all their operands in the same order.
at::Tensor dense_like(const at::Tensor& t, const at::Tensor& like);

// True when t is one value broadcast to every element (all strides 0, e.g. the gradient of out.sum()).
bool is_broadcast_scalar(const at::Tensor& t);

}  // namespace xtc
