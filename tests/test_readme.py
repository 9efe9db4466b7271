"""The usage examples of README.md run as written."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_the_two_commands_and_is_short():
    assert README.count("<!-- train-command -->") == 1 and README.count("<!-- test-command -->") == 1
    assert len(README.splitlines()) <= 200
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(code):
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    grads = [p.grad for p in namespace["model"].parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:5])  # the example's backward reached the model
