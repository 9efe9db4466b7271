"""Study files: the expansion into rows and runs, the folder names, the checks (each error names the file, the
row and the key), the shipped studies, and ``--dry-run``."""

import pytest
import yaml

from xtc_ext.cli import CONFIG_DIR
from xtc_ext.engine import UsageError
from xtc_ext.study import __main__ as study_cli
from xtc_ext.study.runner import run_command, run_state, threads_per_process
from xtc_ext.study.spec import label_of, list_studies, load_study


def _write(tmp_path, spec, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


BASE = {"dataset": "frames", "epochs": 2, "size": [32, 64]}


def test_cross_product_then_explicit_rows_times_seeds(tmp_path):
    spec = {"base": BASE, "seeds": [3, 4],
            "axes": {"model": {"xt18": {"model": "xtasc", "encoder_depth": 18}, "mtnet": {"model": "mtnet"}},
                     "weighting": ["equal", "uncertainty"]},
            "runs": {"st_semseg": {"model": "stnet", "task": "semseg"}}}
    study = load_study(str(_write(tmp_path, spec)), output_dir=str(tmp_path / "out"))
    assert [r.label for r in study.rows] == ["xt18_equal", "xt18_uncertainty", "mtnet_equal", "mtnet_uncertainty",
                                             "st_semseg"]
    assert study.rows[1].options == {**BASE, "model": "xtasc", "encoder_depth": 18, "weighting": "uncertainty"}
    assert [r.name for r in study.runs[:3]] == ["xt18_equal_s3", "xt18_equal_s4", "xt18_uncertainty_s3"]
    assert len(study.runs) == 10 and study.name == "s"
    run = study.runs[1]
    assert run.folder == tmp_path / "out" / "xt18_equal_s4" and run.dataset == "frames"
    argv = list(run.argv)
    assert argv[argv.index("--seed") + 1] == "4" and argv[argv.index("--output-dir") + 1] == str(run.folder)
    assert argv[argv.index("--weighting") + 1] == "equal" and argv[argv.index("--size") + 1:][:2] == ["32", "64"]


def test_extra_options_come_last_and_a_config_is_resolved(tmp_path):
    spec = {"base": {"config": "nyuv2_xtasc", "epochs": 3}, "runs": {"one": {"lam": 0.5}}, "name": "n",
            "output_dir": str(tmp_path / "named")}
    study = load_study(str(_write(tmp_path, spec)), extra=["--data-root", "DATA", "--epochs", "7"])
    argv = list(study.runs[0].argv)
    assert argv[:2] == ["--config", str(CONFIG_DIR / "nyuv2_xtasc.yaml")]
    assert argv.index("--epochs") < argv.index("--data-root") < len(argv) - 4
    assert argv[-6:-4] == ["--epochs", "7"]
    assert study.runs[0].dataset == "nyuv2" and study.output_dir == tmp_path / "named"


@pytest.mark.parametrize("spec, message", [
    ({"runs": {"a": {}}, "colour": 1}, "unknown key 'colour'"),
    ({"base": BASE}, "no runs"),
    ({"runs": {"a": {"lerning_rate": 1}}}, "row 'a': unknown key 'lerning_rate'"),
    ({"runs": {"a": {"weighting": "best"}}}, "row 'a': argument --weighting: invalid choice: 'best'"),
    ({"runs": {"a": {"epochs": "many"}}}, "row 'a': argument --epochs: invalid int value"),
    ({"runs": {"a": {"augment": "yes"}}}, "row 'a': key 'augment': expected true or false"),
    ({"runs": {"a": {"seed": 1}}}, "key 'seed' is set by the study"),
    ({"axes": {"seed": [1, 2]}}, "axis 'seed' is set by the study"),
    ({"axes": {"model": "xtasc"}}, "axis 'model': expected a list of values"),
    ({"axes": {"model": []}}, "axis 'model' has no values"),
    ({"axes": {"model": ["xtasc"]}, "runs": {"xtasc": {}}}, "two rows are labelled 'xtasc'"),
    ({"runs": {"a b": {}}}, "row label 'a b'"),
    ({"runs": {"a": {}}, "seeds": [0, 0]}, "'seeds': repeated values"),
    ({"runs": {"a": {}}, "seeds": "zero"}, "'seeds': expected an integer or a list of integers"),
    ({"runs": {"a": {}}, "processes": 0}, "'processes': expected one integer >= 1"),
    ({"runs": {"a": {}}, "baseline": ["b"]}, "baseline 'b' is neither a row label"),
    ({"runs": {"a": {}}, "keep_checkpoints": "no"}, "'keep_checkpoints': expected true or false"),
    ({"runs": {"a": {"config": "nyuv2_nothing"}}}, "unknown config 'nyuv2_nothing'"),
    (["a list"], "the top level must be a mapping"),
])
def test_errors_name_the_file_row_and_key(tmp_path, spec, message):
    path = _write(tmp_path, spec)
    with pytest.raises(UsageError) as e:
        load_study(str(path))
    assert message in str(e.value)
    assert str(path) in str(e.value) or "unknown config" in str(e.value)


@pytest.mark.parametrize("extra", [["--seed", "3"], ["--output-dir", "x"], ["--resume=a.pt"], ["--config", "c"]])
def test_options_the_study_owns_are_refused_for_its_runs(tmp_path, extra):
    with pytest.raises(UsageError, match=extra[0].split("=")[0]):
        load_study(str(_write(tmp_path, {"runs": {"a": {}}})), extra=extra)


def test_missing_study_lists_the_shipped_ones(tmp_path):
    with pytest.raises(UsageError, match="shipped studies: .*demo"):
        load_study("no_such_study")
    with pytest.raises(UsageError, match="study file not found"):
        load_study(str(tmp_path / "missing.yaml"))


def test_labels_of_values():
    assert [label_of(v) for v in ("equal", 0.1, True, [64, 96], 18)] == ["equal", "0.1", "true", "64x96", "18"]


@pytest.mark.parametrize("name", list_studies())
def test_shipped_studies_load_with_a_data_root(name, tmp_path):
    study = load_study(name, extra=["--data-root", str(tmp_path)])
    assert study.runs and len(study.runs) == len(study.rows) * len(study.seeds)


def test_paper_studies_cover_their_tables():
    assert {"demo", "nyuv2_xtasc", "cityscapes_xtasc", "nyud_mtcp", "pascal_mtcp", "contrastive"} <= set(list_studies())
    nyuv2 = load_study("nyuv2_xtasc", extra=["--data-root", "DATA"])
    assert {"stnet_semseg", "stnet_depth", "mtnet_uncertainty", "align_uncertainty", "xtasc_uncertainty",
            "xtasc_equal", "xtasc_gradnorm"} <= {r.label for r in nyuv2.rows}
    assert {r.dataset for r in nyuv2.runs} == {"nyuv2"}


def test_threads_are_shared_between_the_jobs():
    assert threads_per_process(1, 1, cores=16) == 16
    assert threads_per_process(2, 2, cores=16) == 4
    assert threads_per_process(4, 1, cores=2) == 1


def test_run_state_and_command_follow_the_files_on_disk(tmp_path):
    study = load_study(str(_write(tmp_path, {"base": BASE, "runs": {"a": {}}, "processes": 2})),
                       output_dir=str(tmp_path / "out"))
    run = study.runs[0]
    assert run_state(run) == "new"
    cmd = run_command(run, processes=2)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    assert cmd[6:8] == ["-m", "xtc_ext.train"] and "--resume" not in cmd
    run.folder.mkdir(parents=True)
    (run.folder / "args.json").write_text("{}")
    assert run_state(run) == "restart" and "--resume" not in run_command(run)
    (run.folder / "last.pt").write_bytes(b"x")
    assert run_state(run) == "resume" and run_command(run)[-2:] == ["--resume", str(run.folder / "last.pt")]
    (run.folder / "metrics.json").write_text("{}")
    assert run_state(run) == "done"


def test_dry_run_lists_states_and_commands(tmp_path, capsys):
    path = _write(tmp_path, {"base": BASE, "axes": {"model": ["xtasc", "mtnet"]}, "seeds": [0, 1]})
    out = tmp_path / "out"
    (out / "mtnet_s1").mkdir(parents=True)
    (out / "mtnet_s1" / "last.pt").write_bytes(b"x")
    assert study_cli.main([str(path), "--dry-run", "--jobs", "2", "--output-dir", str(out), "--lr", "0.001"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("study s: 2 rows x 2 seeds = 4 runs") and len(lines) == 5
    assert lines[1].split()[:2] == ["new", "xtasc_s0:"] and "--lr 0.001 --seed 0" in lines[1]
    assert lines[4].split()[:2] == ["resume", "mtnet_s1:"] and lines[4].endswith(f"--resume {out}/mtnet_s1/last.pt")
    assert not (out / "xtasc_s0").exists()


def test_bad_options_exit_2_with_one_line(tmp_path, capsys):
    path = _write(tmp_path, {"runs": {"a": {}}})
    with pytest.raises(SystemExit) as e:
        study_cli.main([str(path), "--dry-run", "--epochs", "zero"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--epochs: invalid int value" in err[0]


@pytest.mark.parametrize("options, message", [
    ({"model": "mtcp", "encoder_depth": 18}, "--encoder-depth applies to --model"),
    ({"model": "mtcp", "weighting": "gradnorm"}, "does not support --weighting gradnorm"),
    ({"epochs": 0}, "--epochs must be >= 1"),
])
def test_combinations_the_training_program_refuses_fail_at_load(tmp_path, options, message):
    with pytest.raises(UsageError, match=message):
        load_study(str(_write(tmp_path, {"base": BASE, "runs": {"a": options}})))
