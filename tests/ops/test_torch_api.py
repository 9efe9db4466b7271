"""The torch APIs the build and CI rely on beyond the stable Python API, each guarded here so that a future
torch release breaks this test rather than users (docs/ops.md, "GPU build").

- ``torch._C._cuda_getArchFlags()``: CMakeLists.txt's default CUDA architecture list (torch's own
  compile-time list; ``torch.cuda.get_arch_list()`` is empty without a GPU). Absent from CPU builds of
  torch; if a CUDA build loses it, CMake falls back to every architecture nvcc supports.
- ``torch._C._dispatch_get_all_op_names`` / ``_dispatch_has_kernel_for_dispatch_key``: the dispatcher
  checks of ``.ci/check_cuda_build.py``.
- The ops' Autograd kernels are ``torch.library.register_autograd``'s (public API; xtc_ext/ops.py uses no
  private torch API): checked by behaviour.
"""

from __future__ import annotations

import re

import pytest
import torch

import xtc_ext  # noqa: F401  (registers the ops)

PRIMITIVE_OPS = (
    "masked_cross_entropy_fwd", "masked_cross_entropy_bwd", "masked_l1_loss_fwd", "masked_l1_loss_bwd",
    "soft_cross_entropy_fwd", "soft_cross_entropy_bwd", "cosine_similarity_loss_fwd",
    "cosine_similarity_loss_bwd", "sigmoid_gate", "sigmoid_gate_bwd",
)


def test_cuda_arch_flags_of_a_cuda_torch():
    if not torch.version.cuda:
        pytest.skip("CPU build of torch: no compile-time CUDA architecture list")
    flags = torch._C._cuda_getArchFlags()
    assert isinstance(flags, str)
    assert re.findall(r"\bsm_\d+", flags), flags


def test_dispatcher_introspection():
    names = torch._C._dispatch_get_all_op_names()
    for op in PRIMITIVE_OPS:
        assert f"xtc_ext::{op}" in names
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"xtc_ext::{op}", "CPU")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"xtc_ext::{op}", "Autograd")
    # The composite public ops have no CPU kernel of their own (the CI's CPU/CUDA comparison skips them).
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("xtc_ext::masked_l1_loss", "CPU")


def test_dispatcher_autograd_kernel_records_and_skips_the_graph():
    pred = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 1, 3, 3, dtype=torch.float64) + 0.5
    loss, denom = torch.ops.xtc_ext.masked_l1_loss_fwd(pred, target, None, 0.0, "mean")
    assert loss.grad_fn is not None and denom.grad_fn is None
    loss.backward()
    torch.testing.assert_close(pred.grad, torch.sign(pred.detach() - target) / pred.numel())
    with torch.no_grad():
        assert torch.ops.xtc_ext.masked_l1_loss_fwd(pred, target, None, 0.0, "mean")[0].grad_fn is None
    plain = torch.ops.xtc_ext.masked_l1_loss_fwd(pred.detach(), target, None, 0.0, "mean")[0]
    assert plain.grad_fn is None


def test_dispatcher_double_backward():
    logits = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, 3))
    loss = torch.ops.xtc_ext.masked_cross_entropy_fwd(logits, target, None, -1, 0.0, "mean")[0]
    (grad,) = torch.autograd.grad(loss, logits, create_graph=True)
    (hvp,) = torch.autograd.grad(grad.pow(2).sum(), logits)
    ref = torch.nn.functional.cross_entropy(logits, target)
    (ref_grad,) = torch.autograd.grad(ref, logits, create_graph=True)
    (ref_hvp,) = torch.autograd.grad(ref_grad.pow(2).sum(), logits)
    torch.testing.assert_close(hvp, ref_hvp)
