"""torch.compile of the ops when no input requires a gradient (evaluation, torch.no_grad): one graph, no
Dynamo error (the autograd.Function path is only taken under torch.func transforms)."""

import pytest
import torch

from xtc_ext import ops

CASES = {
    "masked_cross_entropy": lambda: (torch.randn(2, 5, 4, 4), torch.randint(0, 5, (2, 4, 4))),
    "masked_l1_loss": lambda: (torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4)),
    "soft_cross_entropy": lambda: (torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)),
    "cosine_similarity_loss": lambda: (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)),
    "sigmoid_gate": lambda: (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)),
}


@pytest.mark.parametrize("name", sorted(spec.name for spec in ops.OP_TABLE))
@pytest.mark.parametrize("no_grad", [False, True], ids=["inputs-without-grad", "no_grad-mode"])
def test_compiles_into_one_graph_without_gradients(name, no_grad):
    torch._dynamo.reset()
    fn = getattr(ops, name)
    args = CASES[name]()
    with torch.no_grad() if no_grad else torch.enable_grad():
        explanation = torch._dynamo.explain(fn)(*args)
        compiled = torch.compile(fn, fullgraph=True)(*args)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0
    torch.testing.assert_close(compiled, fn(*args))
