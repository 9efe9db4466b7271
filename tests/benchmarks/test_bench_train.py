"""The training-step benchmark's plumbing, through its ``--dry-run`` mode (nothing timed is asserted on).

``benchmarks/bench_train.py --dry-run --model xtasc`` builds every configuration through the training
program's command line, recipe and engine, runs warm-up, timed and profiled steps, and writes the markdown
table and the JSON; MT-CP's swap of its model-side fused ops for the eager references (the ``authors``
configuration) is checked on the CFM module directly, which is much cheaper than the whole model.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_train.py"
CONFIGS = ("default", "authors", "fused", "bf16", "channels_last", "compile", "all")
FUSED_CONFIGS = ("default", "fused", "all")


@pytest.fixture(scope="module")
def bench_train():
    if str(SCRIPT.parent) not in sys.path:  # the script and bench_ops, which it imports, live there
        sys.path.insert(0, str(SCRIPT.parent))
    return importlib.import_module("bench_train")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_train")
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--warmup", "0", "--model", "xtasc",
           "--json", str(out / "bench_train.json"), "--markdown", str(out / "bench_train.md")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny shapes: threads only add fork-join waits
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "bench_train.json").read_text()), (out / "bench_train.md").read_text(), proc.stdout


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_dry_run_measures_every_configuration(dry_run):
    data, _, _ = dry_run
    meta = data["meta"]
    assert meta["dry_run"] is True and meta["device_type"] == "cpu"
    for key in ("device", "torch", "git_commit", "command", "loadavg_start", "loadavg_end", "build_info"):
        assert meta[key], key
    assert "--dry-run" in meta["command"]
    model = data["models"]["xtasc"]
    assert model["skipped"] == {} and model["size"] == [64, 64] and model["batch_size"] == 2
    assert tuple(model["configs"]) == CONFIGS
    for name, r in model["configs"].items():
        assert "error" not in r, (name, r)
        assert len(r["steps_s"]) == 1 and r["warmup_s"] == []
        for key in ("median_s", "median_cpu_s", "images_per_s", "speedup", "speedup_cpu_time"):
            assert _finite_positive(r[key]), (name, key, r[key])
        assert r["images_per_s"] == pytest.approx(2 / r["median_s"])
        assert isinstance(r["memory"]["peak_bytes"], int) and r["memory"]["peak_bytes"] >= 0, name
        assert len(r["losses"]) == 1 and all(math.isfinite(v) for v in r["losses"]), name
        assert r["config"] == json.loads(json.dumps(r["config"]))  # plain values
        share = r["fused_op_share"]
        assert share["steps"] == 1 and _finite_positive(share["wall_us"]) and 0 <= share["cpu_share"] < 1, name
    assert model["configs"]["authors"]["speedup"] == 1.0


def _auto_on_cpu():
    """What ``--amp auto --channels-last auto`` resolve to on this CPU, as the training program resolves them."""
    from xtc_ext.engine.runtime import resolve_amp, resolve_channels_last

    cpu = torch.device("cpu")
    amp = resolve_amp("auto", cpu)
    return amp, resolve_channels_last("auto", cpu, amp)


def test_configurations_are_the_engine_settings_they_claim(dry_run):
    configs = dry_run[0]["models"]["xtasc"]["configs"]
    auto_amp, auto_channels_last = _auto_on_cpu()
    for name in CONFIGS:
        r = configs[name]
        amp = auto_amp if name == "default" else (torch.bfloat16 if name in ("bf16", "all") else None)
        assert r["amp"] == str(amp), name
        assert r["channels_last"] is (auto_channels_last if name == "default" else name in ("channels_last", "all"))
        assert (r["compile_s"] is not None) == (name in ("compile", "all")), name
        ops = r["fused_op_share"]["ops"]
        if name in FUSED_CONFIGS:  # the XTasC-Net losses: CE, soft CE (consistency) and L1, forward and backward
            expected = {f"xtc_ext::{op}_{pass_}" for op in ("masked_cross_entropy", "soft_cross_entropy", "masked_l1_loss")
                        for pass_ in ("fwd", "bwd")}
            assert expected <= set(ops), (name, ops)
            assert r["fused_op_share"]["cpu_share"] > 0
        else:
            assert ops == [] and r["fused_op_share"]["cpu_share"] == 0, name


def test_losses_against_authors(dry_run):
    """Same seed, weights and batch: fp32 paths agree with the authors' loss closely; bf16 only roughly."""
    configs = dry_run[0]["models"]["xtasc"]["configs"]
    assert configs["authors"]["loss_rel_diff"] == [0.0]
    for name in ("fused", "channels_last", "compile"):
        assert configs[name]["loss_rel_diff"][0] < 1e-4, name
    for name in ("bf16", "all"):
        assert configs[name]["loss_rel_diff"][0] < 0.05, name
    assert configs["default"]["loss_rel_diff"][0] < (0.05 if _auto_on_cpu()[0] is not None else 1e-4)


def test_markdown_table_lists_every_configuration(dry_run):
    data, md, stdout = dry_run
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith(("| config", "| ---"))]
    assert [row.split(" | ")[0][2:] for row in rows] == list(CONFIGS)  # the program's default first
    amp, channels_last = _auto_on_cpu()
    resolved = f"(here: {'full precision' if amp is None else 'bfloat16'}, channels_last {'on' if channels_last else 'off'})"
    assert resolved in rows[0]
    assert "peak RSS delta MiB" in md and data["meta"]["command"] in md and "commit" in md
    assert md.strip() in stdout


def test_authors_swaps_the_models_fused_ops_for_the_eager_references(bench_train):
    """MT-CP's CFM calls xtc_ext.ops.sigmoid_gate / cosine_similarity_loss itself; in the authors'
    configuration no xtc_ext op may run, in the fused one they must."""
    from torch.profiler import ProfilerActivity, profile

    from python_models.mtcp_blocks import CoherenceFusionModule

    torch.manual_seed(0)
    cfm = CoherenceFusionModule(32, num_aux=2)
    main, aux = torch.randn(2, 32, 6, 6), [torch.randn(2, 32, 6, 6) for _ in range(2)]

    def ops_called(loss_impl):
        with bench_train.op_implementation(loss_impl), profile(activities=[ProfilerActivity.CPU]) as prof:
            out, loss = cfm(main, aux)
            (out.square().mean() + loss).backward()
        return {e.name for e in prof.events() if e.name.startswith("xtc_ext::")}

    assert {"xtc_ext::sigmoid_gate", "xtc_ext::sigmoid_gate_bwd", "xtc_ext::cosine_similarity_loss_fwd",
            "xtc_ext::cosine_similarity_loss_bwd"} <= ops_called("fused")
    assert ops_called("eager") == set()
    assert ops_called("fused")  # the swap is undone after the block


def test_bad_arguments_are_refused(bench_train, capsys):
    for argv, message in ((["--steps", "0"], "--steps must be >= 1"), (["--configs", "fp8"], "invalid choice"),
                          (["--warmup", "-1"], "--warmup and --profile-steps must be >= 0")):
        with pytest.raises(SystemExit):
            bench_train.parse_args(["--dry-run", *argv])
        assert message in capsys.readouterr().err


def test_compiled_configurations_run_last(bench_train):
    """Under a --max-minutes cap, the compilations (minutes each) are what gets dropped."""
    plan = bench_train.run_plan(["xtasc", "mtcp"], ["authors", "compile", "fused", "all"])
    assert plan == [("xtasc", "authors"), ("xtasc", "fused"), ("mtcp", "authors"), ("mtcp", "fused"),
                    ("xtasc", "compile"), ("mtcp", "compile"), ("xtasc", "all"), ("mtcp", "all")]


def test_train_args_reach_every_configuration_and_override_it(bench_train):
    """``--train-args`` (e.g. the contrastive regularizer's overhead: ``--train-args --contrastive``) comes after
    the configuration's own options, so it can also override them."""
    opts = bench_train.parse_args(["--dry-run", "--model", "xtasc", "--train-args", "--contrastive --amp bf16"])
    assert opts.train_extra == ("--contrastive", "--amp", "bf16")
    args = bench_train.train_args("xtasc", bench_train.CONFIGS["authors"], "cpu", 2, (64, 64), (), opts.train_extra)
    assert args.contrastive is True and args.amp == "bf16" and args.loss_impl == "eager"
    plain = bench_train.train_args("xtasc", bench_train.CONFIGS["authors"], "cpu", 2, (64, 64))
    assert plain.contrastive is False and plain.amp == "none"


def test_weightings_are_measured_against_equal(bench_train):
    """``--weightings`` adds ``weighting:equal`` and one configuration per weighting (the program's defaults with
    that ``--weighting``, options included), and the overhead table is their step time against equal's."""
    opts = bench_train.parse_args(["--dry-run", "--configs", "default", "--weightings", "upgrad",
                                   "mgda --jacobian shared-parameters"])
    assert opts.configs == ["default", "weighting:equal", "weighting:upgrad",
                            "weighting:mgda --jacobian shared-parameters"]
    config = bench_train.config_of("weighting:mgda --jacobian shared-parameters")
    assert config.argv()[-4:] == ["--weighting", "mgda", "--jacobian", "shared-parameters"]
    args = bench_train.train_args("mtcp", config, "cpu", 2, (64, 64))
    assert args.weighting == "mgda" and args.jacobian == "shared-parameters" and args.amp == "auto"
    fake = {name: {"median_s": s, "median_cpu_s": 2 * s, "losses": [1.0], "memory": {"peak_bytes": None}}
            for name, s in (("weighting:equal", 1.0), ("weighting:upgrad", 1.5))}
    bench_train.add_ratios(fake)
    assert fake["weighting:upgrad"]["overhead_vs_equal"] == pytest.approx(0.5)
    assert "| upgrad | 1500.0 | +50.0 % | 3000.0 | +50.0 % |" in bench_train._overhead_table(fake)
