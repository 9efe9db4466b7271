"""A study's tables and figure from synthetic ``metrics.json`` files: mean ± std (n) per cell, Δm per seed
against the mean of the single-task rows (checked against an independent computation), the best mean of each
column marked, the CSV columns, ``--report`` rebuilding from disk, and the baseline errors."""

import csv
import json
import math
import random
import statistics

import pytest
import yaml
from PIL import Image

from xtc_ext.cli import check_command_line, engine_config, finalize_args
from xtc_ext.study import __main__ as study_cli
from xtc_ext.study import load_study, write_report

SPEC = {"base": {"dataset": "frames", "epochs": 1},
        "axes": {"model": ["xtasc", "mtnet"], "weighting": ["equal"]},
        "runs": {"stnet_semseg": {"model": "stnet", "task": "semseg"},
                 "stnet_depth": {"model": "stnet", "task": "depth"}},
        "seeds": [0, 1, 2]}
SEG, DEPTH = ("mIoU", "pixel_acc"), ("abs_err", "rel_err", "rmse")


def _metrics(label, rng):
    seg = {"mIoU": rng.uniform(0.2, 0.6), "pixel_acc": rng.uniform(0.5, 0.9), "iou_per_class": [0.1, 0.2]}
    depth = {"abs_err": rng.uniform(0.4, 1.2), "rel_err": rng.uniform(0.1, 0.4), "rmse": rng.uniform(0.6, 1.5)}
    test = {"semseg_loss": 1.0} | ({} if label == "stnet_depth" else seg) | ({} if label == "stnet_semseg" else depth)
    return test


def _write_runs(tmp_path, spec=SPEC, skip=("mtnet_equal_s2",)):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    study = load_study(str(path), output_dir=str(tmp_path / "out"))
    rng = random.Random(7)
    tests = {}
    for run in study.runs:
        if run.name in skip:
            continue
        args = finalize_args(check_command_line(run.argv))
        test = _metrics(run.row.label, rng)
        tasks = [args.task] if args.model == "stnet" else ["semseg", "depth"]
        run.folder.mkdir(parents=True)
        (run.folder / "metrics.json").write_text(json.dumps(
            {"test": test, "tasks": tasks, "dataset": "frames", "args": engine_config(args).recorded_arguments()}))
        tests[run.name] = test
    return path, study, tests


def _expected_delta_m(test, baseline):
    keys, lower = ("mIoU", "pixel_acc", "abs_err", "rel_err"), ("abs_err", "rel_err")
    return 100 / 4 * sum((-1 if k in lower else 1) * (test[k] - baseline[k]) / baseline[k] for k in keys)


def _csv_rows(path):
    with open(path) as f:
        return {r["row"]: r for r in csv.DictReader(f)}


def test_table_means_stds_counts_and_delta_m(tmp_path):
    _, study, tests = _write_runs(tmp_path)
    written = write_report(study)
    out = tmp_path / "out"
    assert [p.name for p in written] == ["table_frames.md", "table_frames.csv", "figure_frames.png"]
    seeds = lambda label: [tests[f"{label}_s{s}"] for s in (0, 1, 2) if f"{label}_s{s}" in tests]  # noqa: E731
    baseline = {k: statistics.mean(t[k] for t in seeds("stnet_semseg")) for k in SEG}
    baseline |= {k: statistics.mean(t[k] for t in seeds("stnet_depth")) for k in DEPTH}
    assert json.loads((out / "baseline_frames.json").read_text()) == pytest.approx(baseline, rel=1e-12)
    rows = _csv_rows(out / "table_frames.csv")
    assert list(rows) == ["xtasc_equal", "mtnet_equal", "stnet_semseg", "stnet_depth"]
    for label in ("xtasc_equal", "mtnet_equal"):
        runs = seeds(label)
        for key in SEG + DEPTH:
            values = [t[key] for t in runs]
            assert float(rows[label][f"{key}_mean"]) == pytest.approx(statistics.mean(values), rel=1e-12)
            assert float(rows[label][f"{key}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-12)
            assert int(rows[label][f"{key}_n"]) == len(runs)
        deltas = [_expected_delta_m(t, baseline) for t in runs]
        assert float(rows[label]["delta_m_mean"]) == pytest.approx(statistics.mean(deltas), rel=1e-9)
        assert float(rows[label]["delta_m_std"]) == pytest.approx(statistics.stdev(deltas), rel=1e-9)
    assert rows["mtnet_equal"]["mIoU_n"] == "2" and rows["stnet_semseg"]["abs_err_n"] == "0"
    assert "semseg_loss_mean" not in rows["xtasc_equal"] and "iou_per_class_mean" not in rows["xtasc_equal"]
    md = (out / "table_frames.md").read_text()
    assert "| row | mIoU | pixel_acc | abs_err | rel_err | rmse | Δm (%) |" in md
    values = [t["mIoU"] for t in seeds("xtasc_equal")]
    cell = f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g} (3)"
    best_miou = max(("xtasc_equal", "mtnet_equal", "stnet_semseg"), key=lambda r: rows[r]["mIoU_mean"])
    line = next(line for line in md.splitlines() if line.startswith("| xtasc_equal |"))
    assert (f"**{cell}**" if best_miou == "xtasc_equal" else f" {cell} ") in line
    best_line = next(line for line in md.splitlines() if line.startswith(f"| {best_miou} |"))
    assert best_line.split("|")[2].strip().startswith("**")
    delta_line = next(line for line in md.splitlines() if line.startswith("| mtnet_equal |"))
    assert f"{float(rows['mtnet_equal']['delta_m_mean']):+.2f} ± " in delta_line.split("|")[-2]
    assert "baseline: stnet_semseg, stnet_depth (mean over seeds)" in md and "11 runs" in md
    with Image.open(out / "figure_frames.png") as im:
        assert im.size[0] > 300 and im.size[1] > 300


def test_report_rebuilds_from_disk_and_explicit_baseline_files(tmp_path, capsys):
    spec = dict(SPEC, runs={}, baseline=[str(tmp_path / "base.json")])
    (tmp_path / "base.json").write_text(json.dumps({"mIoU": 0.5, "pixel_acc": 0.8, "abs_err": 1.0, "rel_err": 0.25}))
    path, study, tests = _write_runs(tmp_path, spec, skip=())
    assert study_cli.main([str(path), "--report", "--output-dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| xtasc_equal |" in printed and "wrote " in printed
    rows = _csv_rows(tmp_path / "out" / "table_frames.csv")
    base = json.loads((tmp_path / "base.json").read_text())
    deltas = [_expected_delta_m(tests[f"mtnet_equal_s{s}"], base) for s in (0, 1, 2)]
    assert float(rows["mtnet_equal"]["delta_m_mean"]) == pytest.approx(statistics.mean(deltas), rel=1e-9)


def test_two_baseline_rows_of_one_metric_are_refused_by_name(tmp_path, capsys):
    spec = dict(SPEC, runs={"st_a": {"model": "stnet", "task": "semseg"},
                            "st_b": {"model": "stnet", "task": "semseg", "lr": 0.001}})
    path, _, _ = _write_runs(tmp_path, spec)
    with pytest.raises(SystemExit) as e:
        study_cli.main([str(path), "--report", "--output-dir", str(tmp_path / "out")])
    assert e.value.code == 1
    assert "baseline metric 'mIoU' comes from both row 'st_a' and row 'st_b'" in capsys.readouterr().err


def test_rows_without_runs_show_dashes_and_no_baseline_no_delta_m(tmp_path):
    spec = dict(SPEC, runs={})
    _, study, _ = _write_runs(tmp_path, spec, skip=("mtnet_equal_s0", "mtnet_equal_s1", "mtnet_equal_s2"))
    write_report(study)
    md = (tmp_path / "out" / "table_frames.md").read_text()
    assert "| mtnet_equal | - | - | - | - | - |" in md and "Δm" not in md.split("\n\n")[1]
    assert "no baseline rows finished: no Δm" in md
    rows = _csv_rows(tmp_path / "out" / "table_frames.csv")
    assert rows["mtnet_equal"]["mIoU_n"] == "0" and math.isnan(float(rows["mtnet_equal"]["mIoU_mean"] or "nan"))


def test_training_columns_come_from_the_logs(tmp_path):
    spec = dict(SPEC, runs={}, axes={"model": ["xtasc"]})
    _, study, _ = _write_runs(tmp_path, spec, skip=())
    for seed, run in enumerate(study.runs):
        result = json.loads((run.folder / "metrics.json").read_text())
        (run.folder / "metrics.json").write_text(json.dumps(result | {"last_epoch_loss": 1.0 + seed}))
        epochs = [{"epoch": 1, "epoch_time_s": 9.0, "contrastive": 0.5},
                  {"epoch": 2, "epoch_time_s": 2.0 + seed, "contrastive": 0.2},
                  {"epoch": 3, "epoch_time_s": 4.0 + seed, "contrastive": 0.1 * (seed + 1)}]
        (run.folder / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    write_report(study)
    row = _csv_rows(tmp_path / "out" / "table_frames.csv")["xtasc"]
    assert float(row["train_loss_mean"]) == pytest.approx(2.0) and float(row["train_loss_std"]) == pytest.approx(1.0)
    assert float(row["contrastive_mean"]) == pytest.approx(0.2)
    assert float(row["epoch_time_s_mean"]) == pytest.approx(statistics.mean([3.0, 4.0, 5.0]))
    header = (tmp_path / "out" / "table_frames.md").read_text().splitlines()[2]
    assert header.endswith("| rmse | train_loss | contrastive | epoch_time_s |")
