"""CPU benchmarks: every op, fused (xtc_ext.ops) vs eager (xtc_ext.reference), forward and forward+backward.

Run:  pytest benchmarks/bench_cpu.py --benchmark-columns=median,iqr,rounds --benchmark-sort=name
(not collected by the default `pytest`, whose testpaths is tests/). Sizes: NYUv2 MTAN batch
(8x13x288x384; depth 8x1x288x384) and a smaller one for the losses on segmentation/depth maps;
MT-CP features (256 channels at H/4: 8x256x72x96 and a smaller one) for cosine_similarity_loss and
sigmoid_gate, and NYUv2 normals (8x3x288x384) for cosine_similarity_loss. Inputs are fresh random
tensors, fp32, built by benchmarks/bench_ops.py (the GPU benchmark), which also defines how a pass
runs: fwd under no_grad; fwd_bwd = forward + backward with a random upstream gradient (a task
weight for the losses); fwd_sum_bwd (sigmoid_gate) = forward + out.sum().backward(), an expanded
upstream gradient. Ops not yet in xtc_ext.ops are skipped.
"""

import pytest
import torch

from bench_ops import input_shape, make_inputs, run_pass  # noqa: I001 (puts the checkout first on sys.path)
import xtc_ext
from xtc_ext import ops, reference

SHAPES = {
    "nyuv2_8x13x288x384": (8, 13, 288, 384),
    "small_2x13x96x128": (2, 13, 96, 128),
    "mtcp_feat_8x256x72x96": (8, 256, 72, 96),
    "mtcp_feat_small_2x256x24x32": (2, 256, 24, 32),
    "normals_8x3x288x384": (8, 3, 288, 384),
}
OP_SHAPES = {
    "masked_cross_entropy": ("nyuv2_8x13x288x384", "small_2x13x96x128"),
    "masked_l1_loss": ("nyuv2_8x13x288x384", "small_2x13x96x128"),  # run with one channel (depth)
    "soft_cross_entropy": ("nyuv2_8x13x288x384", "small_2x13x96x128"),
    "cosine_similarity_loss": ("mtcp_feat_8x256x72x96", "mtcp_feat_small_2x256x24x32", "normals_8x3x288x384"),
    "sigmoid_gate": ("mtcp_feat_8x256x72x96", "mtcp_feat_small_2x256x24x32"),
}
CASES = [(op, shape_name) for op, names in OP_SHAPES.items() for shape_name in names]
IMPLS = {"fused": ops, "eager": reference}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("pass_", ["fwd", "fwd_bwd", "fwd_sum_bwd"])
@pytest.mark.parametrize("op,shape_name", CASES)
def test_op(benchmark, op, shape_name, pass_, impl):
    if not hasattr(ops, op) or not hasattr(reference, op):
        pytest.skip(f"{op} is not in xtc_ext.ops / xtc_ext.reference yet")
    if pass_ == "fwd_sum_bwd" and op != "sigmoid_gate":
        pytest.skip("fwd_sum_bwd (an expanded upstream gradient) is measured for the unreduced op")
    fn = getattr(IMPLS[impl], op)
    shape = input_shape(op, SHAPES[shape_name])
    inp = make_inputs(op, shape, torch.float32, "cpu", torch.Generator().manual_seed(0))
    benchmark.extra_info.update(torch=torch.__version__, threads=torch.get_num_threads(), shape=list(shape),
                                source_hash=xtc_ext.build_info["source_hash"][:12])
    if pass_ == "fwd":
        benchmark(run_pass, fn, inp, "fwd")
    else:

        def step():
            run_pass(fn, inp, pass_)
            inp.clear()

        benchmark(step)
