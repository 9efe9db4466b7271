// The xtc_ext operator library, registered from the op table (op_table.h): the schema of every op, the
// public ops' CompositeImplicitAutograd wrappers (whose internal *_fwd kernels get their autograd and
// double backward from Python, xtc_ext/ops.py), and the kernels of every device-dispatched op for the
// CPU, Meta (fake-tensor) and, in a CUDA build, CUDA dispatch keys. The kernels themselves live in their
// op's file pair (csrc/<op>.cpp, csrc/<op>.cu); all of them validate their arguments with the op's
// check function, before touching memory.
#include <torch/library.h>

#include "op_table.h"

#define XTC_OP_DEF(name, signature, schema) m.def(schema);
#define XTC_OP_IMPL_COMPOSITE(name, signature, schema) m.impl(#name, &composite::name);
#define XTC_OP_IMPL_CPU(name, signature, schema) m.impl(#name, &cpu::name);
#define XTC_OP_IMPL_META(name, signature, schema) m.impl(#name, &meta::name);
#define XTC_OP_IMPL_GPU(name, signature, schema) m.impl(#name, &gpu::name);

namespace xtc {

TORCH_LIBRARY(xtc_ext, m) { XTC_OP_TABLE(XTC_OP_DEF, XTC_OP_DEF) }

TORCH_LIBRARY_IMPL(xtc_ext, CompositeImplicitAutograd, m) { XTC_OP_TABLE(XTC_OP_IMPL_COMPOSITE, XTC_OP_IGNORE) }

TORCH_LIBRARY_IMPL(xtc_ext, CPU, m) { XTC_OP_TABLE(XTC_OP_IGNORE, XTC_OP_IMPL_CPU) }

TORCH_LIBRARY_IMPL(xtc_ext, Meta, m) { XTC_OP_TABLE(XTC_OP_IGNORE, XTC_OP_IMPL_META) }

#if XTC_WITH_CUDA
TORCH_LIBRARY_IMPL(xtc_ext, CUDA, m) { XTC_OP_TABLE(XTC_OP_IGNORE, XTC_OP_IMPL_GPU) }
#endif

}  // namespace xtc
