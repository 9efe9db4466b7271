"""CPU benchmarks: every op, fused (xtc_ext.ops) vs eager (xtc_ext.reference), forward and forward+backward.

Run:  pytest benchmarks/bench_cpu.py --benchmark-columns=median,iqr,rounds --benchmark-sort=name
(not collected by the default `pytest`, whose testpaths is tests/). Sizes: NYUv2 MTAN batch
(8x13x288x384) and a smaller one; inputs are fresh random tensors, fp32.
"""

import pytest
import torch

import xtc_ext
from xtc_ext import ops, reference

SHAPES = {"nyuv2_8x13x288x384": (8, 13, 288, 384), "small_2x13x96x128": (2, 13, 96, 128)}
IMPLS = {"fused": ops, "eager": reference}


def _inputs(op, shape):
    N, C, H, W = shape
    g = torch.Generator().manual_seed(0)
    if op == "masked_cross_entropy":
        target = torch.randint(-1, C, (N, H, W), generator=g)
        return torch.randn(shape, generator=g), (target,), {}
    if op == "soft_cross_entropy":
        return torch.randn(shape, generator=g), (torch.randn(shape, generator=g),), {}
    target = torch.rand((N, 1, H, W), generator=g) * 10
    target[target < 1] = 0
    return torch.randn((N, 1, H, W), generator=g), (target,), {}


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("pass_", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("op", ["masked_cross_entropy", "masked_l1_loss", "soft_cross_entropy"])
def test_op(benchmark, op, pass_, impl, shape_name):
    fn = getattr(IMPLS[impl], op)
    x, args, kwargs = _inputs(op, SHAPES[shape_name])
    benchmark.extra_info.update(torch=torch.__version__, threads=torch.get_num_threads(),
                                source_hash=xtc_ext.build_info["source_hash"][:12])
    if pass_ == "fwd":
        with torch.no_grad():
            benchmark(fn, x, *args, **kwargs)
    else:
        x.requires_grad_()

        def step():
            fn(x, *args, **kwargs).backward()
            x.grad = None

        benchmark(step)
