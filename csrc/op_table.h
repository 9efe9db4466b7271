// The op table: every op of the xtc_ext library, one entry per op (its rows below), with its C++ signature
// and its schema. Everything else that is per op and not kernel code is generated from it (ops.cpp): the
// schemas (TORCH_LIBRARY), the registration of the kernels for the CPU, Meta and CUDA dispatch keys and of
// the public CompositeImplicitAutograd wrappers, and the declarations below that tie each row to the
// functions of its file pair (csrc/<op>.cpp: validation, CPU kernels, Meta kernels, public wrapper, CUDA
// glue; csrc/<op>.cu: CUDA kernels). The Python side has its own table (xtc_ext/_op_table.py).
//
// Rows:
//   PUBLIC(name, signature, schema)  a public op implemented by a CompositeImplicitAutograd wrapper
//                                    (xtc::composite::name, usually around name_fwd);
//   KERNEL(name, signature, schema)  a device-dispatched op: xtc::cpu::name, xtc::meta::name and, in a CUDA
//                                    build, xtc::gpu::name.
// A signature is a function type (its commas inside parentheses; Tensor2/Tensor3 for tuples). The
// registration checks that it matches the schema (torch infers the schema from the function), and a kernel
// defined with another signature is a different function, so the build fails to link.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>

namespace xtc {

using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;
using Tensor2 = std::tuple<at::Tensor, at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace xtc

// The dispatcher handle of the KERNEL op `name`, typed with its signature from the table (a public wrapper
// calls its *_fwd op through it, so that the call dispatches to the input's device).
#define XTC_KERNEL_OP(name) ::xtc::find_op<decltype(::xtc::cpu::name)>("xtc_ext::" #name)

// clang-format off
#define XTC_OP_TABLE(PUBLIC, KERNEL)                                                                              \
  /* masked_cross_entropy: csrc/masked_cross_entropy.{cpp,cu} */                                                  \
  PUBLIC(masked_cross_entropy,                                                                                    \
         Tensor(const Tensor&, const Tensor&, int64_t, const OptTensor&, double, c10::string_view),              \
         "masked_cross_entropy(Tensor logits, Tensor target, int ignore_index=-1, Tensor? weight=None,"           \
         " float label_smoothing=0.0, str reduction=\"mean\") -> Tensor")                                         \
  KERNEL(masked_cross_entropy_fwd,                                                                                \
         Tensor3(const Tensor&, const Tensor&, const OptTensor&, int64_t, double, c10::string_view),             \
         "masked_cross_entropy_fwd(Tensor logits, Tensor target, Tensor? weight, int ignore_index,"               \
         " float label_smoothing, str reduction) -> (Tensor loss, Tensor lse_minus_max, Tensor denom)")           \
  KERNEL(masked_cross_entropy_bwd,                                                                                \
         Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,      \
                int64_t, double, c10::string_view),                                                               \
         "masked_cross_entropy_bwd(Tensor grad_loss, Tensor logits, Tensor target, Tensor? weight,"               \
         " Tensor lse_minus_max, Tensor denom, int ignore_index, float label_smoothing, str reduction) -> Tensor") \
  /* masked_l1_loss: csrc/masked_l1_loss.{cpp,cu} */                                                              \
  PUBLIC(masked_l1_loss,                                                                                          \
         Tensor(const Tensor&, const Tensor&, const OptTensor&, std::optional<double>, c10::string_view),        \
         "masked_l1_loss(Tensor pred, Tensor target, Tensor? mask=None, float? invalid_value=0.0,"                \
         " str reduction=\"mean\") -> Tensor")                                                                    \
  KERNEL(masked_l1_loss_fwd,                                                                                      \
         Tensor2(const Tensor&, const Tensor&, const OptTensor&, std::optional<double>, c10::string_view),       \
         "masked_l1_loss_fwd(Tensor pred, Tensor target, Tensor? mask, float? invalid_value, str reduction)"      \
         " -> (Tensor loss, Tensor denom)")                                                                       \
  KERNEL(masked_l1_loss_bwd,                                                                                      \
         Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,                     \
                std::optional<double>, c10::string_view),                                                         \
         "masked_l1_loss_bwd(Tensor grad_loss, Tensor pred, Tensor target, Tensor? mask, Tensor denom,"           \
         " float? invalid_value, str reduction) -> Tensor")                                                       \
  /* soft_cross_entropy: csrc/soft_cross_entropy.{cpp,cu} */                                                      \
  PUBLIC(soft_cross_entropy,                                                                                      \
         Tensor(const Tensor&, const Tensor&, const OptTensor&, c10::string_view),                                \
         "soft_cross_entropy(Tensor logits, Tensor target_logits, Tensor? mask=None, str reduction=\"mean\")"     \
         " -> Tensor")                                                                                            \
  KERNEL(soft_cross_entropy_fwd,                                                                                  \
         Tensor3(const Tensor&, const Tensor&, const OptTensor&, c10::string_view),                               \
         "soft_cross_entropy_fwd(Tensor logits, Tensor target_logits, Tensor? mask, str reduction)"               \
         " -> (Tensor loss, Tensor lse_minus_max, Tensor denom)")                                                 \
  KERNEL(soft_cross_entropy_bwd,                                                                                  \
         Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,      \
                c10::string_view),                                                                                \
         "soft_cross_entropy_bwd(Tensor grad_loss, Tensor logits, Tensor target_logits, Tensor? mask,"            \
         " Tensor lse_minus_max, Tensor denom, str reduction) -> Tensor")                                         \
  /* cosine_similarity_loss: csrc/cosine_similarity_loss.{cpp,cu} */                                              \
  PUBLIC(cosine_similarity_loss,                                                                                  \
         Tensor(const Tensor&, const Tensor&, const OptTensor&, double, c10::string_view, int64_t),               \
         "cosine_similarity_loss(Tensor a, Tensor b, Tensor? mask=None, float eps=1e-8, str reduction=\"mean\","  \
         " int dim=1) -> Tensor")                                                                                 \
  KERNEL(cosine_similarity_loss_fwd,                                                                              \
         Tensor2(const Tensor&, const Tensor&, const OptTensor&, double, c10::string_view, int64_t),              \
         "cosine_similarity_loss_fwd(Tensor a, Tensor b, Tensor? mask, float eps, str reduction, int dim)"        \
         " -> (Tensor loss, Tensor denom)")                                                                       \
  KERNEL(cosine_similarity_loss_bwd,                                                                              \
         Tensor2(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, double,            \
                 c10::string_view, int64_t),                                                                      \
         "cosine_similarity_loss_bwd(Tensor grad_loss, Tensor a, Tensor b, Tensor? mask, Tensor denom, float eps," \
         " str reduction, int dim) -> (Tensor grad_a, Tensor grad_b)")                                            \
  /* sigmoid_gate: csrc/sigmoid_gate.{cpp,cu} */                                                                  \
  KERNEL(sigmoid_gate, Tensor(const Tensor&, const Tensor&), "sigmoid_gate(Tensor x, Tensor gate_logits) -> Tensor") \
  KERNEL(sigmoid_gate_bwd, Tensor2(const Tensor&, const Tensor&, const Tensor&),                                  \
         "sigmoid_gate_bwd(Tensor grad_out, Tensor x, Tensor gate_logits) -> (Tensor grad_x, Tensor grad_gate)")
// clang-format on

#define XTC_OP_IGNORE(name, signature, schema)
#define XTC_OP_DECLARE(name, signature, schema) std::type_identity_t<signature> name;

// The functions each row names, defined in the op's csrc/<op>.cpp.
namespace xtc::composite {
XTC_OP_TABLE(XTC_OP_DECLARE, XTC_OP_IGNORE)
}  // namespace xtc::composite
namespace xtc::cpu {
XTC_OP_TABLE(XTC_OP_IGNORE, XTC_OP_DECLARE)
}  // namespace xtc::cpu
namespace xtc::meta {
XTC_OP_TABLE(XTC_OP_IGNORE, XTC_OP_DECLARE)
}  // namespace xtc::meta
#if XTC_WITH_CUDA
namespace xtc::gpu {
XTC_OP_TABLE(XTC_OP_IGNORE, XTC_OP_DECLARE)
}  // namespace xtc::gpu
#endif
