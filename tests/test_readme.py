"""The usage examples of README.md run as written."""

import json
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_the_two_commands_and_is_short():
    assert README.count("<!-- train-command -->") == 1 and README.count("<!-- test-command -->") == 1
    assert len(README.splitlines()) <= 200
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the training example writes runs/notebook here
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    if "run" in namespace:  # training from Python: a whole run, with the config change the example makes
        result, config = namespace["result"], namespace["run"].config
        recorded = json.loads((Path(config.output.output_dir) / "metrics.json").read_text())
        assert result["steps"] == recorded["steps"] > 0 and recorded["args"]["lr"] == config.optim.lr != 1e-4
        assert recorded["epochs_trained"] == config.optim.epochs and "mIoU" in result["test"]
        return
    grads = [p.grad for p in namespace["model"].parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:5])  # the example's backward reached the model
