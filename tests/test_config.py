"""Job configs: YAML in conf/ loads, overrides apply, unknown keys and bad values are named."""

import re

import pytest

from semid_spark.cli import parse_args
from semid_spark.config import JobConfig
from semid_spark.exceptions import ConfigError


@pytest.mark.parametrize("path", ["conf/demo.yaml", "conf/cluster.example.yaml"])
def test_shipped_configs_load(path):
    cfg = JobConfig.from_yaml(path)
    assert cfg.model.n_levels == 3 and cfg.input.key_col == "item_id"


def test_overrides_are_parsed_as_yaml():
    cfg = JobConfig.from_yaml("conf/demo.yaml", ["model.n_clusters=64", "model.kind=rq_vae", "output.path=/tmp/x",
                                                 "model.params={e_dim: 16}"])
    assert (cfg.model.n_clusters, cfg.model.kind, cfg.output.path, cfg.model.params) == (64, "rq_vae", "/tmp/x", {"e_dim": 16})


@pytest.mark.parametrize(
    "raw, overrides, message",
    [
        ({"input": {"path": "x"}, "modle": {}}, [], r"^job.yaml: unknown key\(s\) \['modle'\]; valid keys: \['encode', 'input'"),
        ({"input": {"path": "x", "keycol": "id"}}, [], r"^job.yaml: unknown key\(s\) \['input.keycol'\]; valid keys of input: .*'key_col'"),
        ({"input": {"path": "x"}}, ["model.kind=kmeans"], r"^--set model.kind=kmeans: model.kind='kmeans': expected one of 'rq_kmeans', 'rq_vae'"),
        ({"input": {"path": "x"}}, ["model.n_clusters=many"], r"^--set model.n_clusters=many: model.n_clusters='many': expected int or a list of int"),
        ({"input": {"path": "x"}, "model": {"n_clusters": "many"}}, [], r"^job.yaml: model.n_clusters='many'"),
        ({"input": {"path": "x"}}, ["model.n_clusters=1"], r"^--set model.n_clusters=1: model: .*n_clusters=1"),
        ({"input": {"path": "x"}}, ["model.n_levels=2", "model.n_clusters=[8,8,4]"], r"n_levels=2 but n_clusters lists 3 sizes"),
        ({"input": {}}, [], r"exactly one of input.path or input.table"),
        ({"input": {"path": "x", "on_invalid": "reject"}}, [], r"needs input.reject_path"),
        ({"input": {"path": "x"}}, ["n_clusters=3"], r"^--set 'n_clusters=3': expected section.key=value"),
        ({"input": {"path": "x"}}, ["modle.n_clusters=3"], r"^--set modle.n_clusters=3: unknown key\(s\) \['modle'\]"),
        ({"input": {"path": "x"}}, ["model.seed.x=3"], r"^--set model.seed.x=3: model.seed=\{'x': 3\}: expected int"),
        ({"input": {"path": "x"}}, ["uniqueness.strategy=move"], r"uniqueness.strategy='move'; expected 'relocate' or 'suffix'"),
        ({"input": {"path": "x"}}, ["uniqueness.relocate_candidates=1"], r"uniqueness.relocate_candidates=1; expected an int >= 2"),
        ({"input": {"path": "x"}}, ["output.on_refit=replace"], r"output.on_refit='replace': expected one of 'new_table', 'keep_ids'"),
        ({"input": {"path": "x"}, "output": {"refit_path": "a", "refit_table": "b"}}, [], r"one of output.refit_path or output.refit_table"),
        ({"input": {"path": "x"}}, ["quality.max_churn=1.5"], r"quality.max_churn=1.5; expected a share between 0 and 1"),
        ({}, [], r"^job.yaml: no input: section; a job reads input.path"),
        ({"model": {"n_clusters": 8}}, [], r"^job.yaml: no input: section"),
    ],
)
def test_bad_configs_are_named(raw, overrides, message):
    with pytest.raises(ConfigError, match=message):
        JobConfig.from_dict(raw, overrides, source="job.yaml")


def test_set_takes_dotted_paths_into_dict_settings():
    cfg = JobConfig.from_dict({"input": {"path": "x"}, "spark": {"conf": {"spark.a": "1"}}},
                              ["spark.conf.spark.executor.memory=2g", "spark.conf.spark.sql.adaptive.enabled=true",
                               "model.params.refine_passes=0"])
    assert cfg.spark.conf == {"spark.a": "1", "spark.executor.memory": "2g", "spark.sql.adaptive.enabled": True}
    assert cfg.spark.settings()["spark.sql.adaptive.enabled"] == "true"  # as Spark spells it, not Python's True
    assert cfg.model.params == {"refine_passes": 0}


def test_one_size_per_level():
    cfg = JobConfig.from_dict({"input": {"path": "x"}, "model": {"n_clusters": [2048, 1024, 512]}})
    assert (cfg.model.n_levels, cfg.model.sizes) == (3, [2048, 1024, 512])
    cfg = JobConfig.from_dict({"input": {"path": "x"}}, ["model.n_levels=4", "model.n_clusters=16"])
    assert (cfg.model.n_levels, cfg.model.sizes) == (4, [16] * 4)
    assert JobConfig.from_dict({"input": {"path": "x"}}).model.sizes == [256] * 3


def test_yaml_syntax_errors_name_the_file_line_and_column(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input:\n  path: x\n model: 3\n")
    with pytest.raises(ConfigError, match=rf"^{path} line 3, column 2: not valid YAML: expected <block end>"):
        JobConfig.from_yaml(str(path))


def test_the_config_reference_is_complete_and_current():
    """docs/config.md is generated from the classes: every key has a description, and the page is current."""
    from pathlib import Path

    from semid_spark.config_reference import markdown, rows

    undocumented = [key for key, _, _, doc in rows() if not doc]
    assert not undocumented, f"document these keys with a comment in config.py: {undocumented}"
    page = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert page.read_text() == markdown(), "regenerate: python -m semid_spark.config_reference > docs/config.md"
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", page.read_text(), re.M))
    assert documented == {key for key, *_ in rows()}


def test_cli_arguments():
    args = parse_args(["run", "--config", "conf/demo.yaml", "--set", "model.seed=3", "--set", "encode.device=cpu"])
    assert args.command == "run" and args.set == ["model.seed=3", "encode.device=cpu"]
    with pytest.raises(SystemExit):
        parse_args(["train", "--config", "x.yaml"])


def test_each_verb_has_its_own_flags(capsys):
    helps = {}
    for verb in ("run", "fit", "assign", "validate", "refit", "evaluate", "advise"):
        with pytest.raises(SystemExit) as done:
            parse_args([verb, "--help"])
        assert done.value.code == 0
        helps[verb] = capsys.readouterr().out
    assert len(set(helps.values())) == len(helps)
    assert "--projection" in helps["evaluate"] and "--projection" not in helps["fit"]
    assert "--target-rows" in helps["advise"] and "--sample-rows" in helps["validate"]
    for verb in helps:
        assert "--config" in helps[verb] and "--conf " in helps[verb] and "--set" in helps[verb]


def test_foreign_flags_and_unknown_verbs_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as done:
        parse_args(["fit", "--config", "x.yaml", "--k", "3", "--projection", "umap"])
    assert done.value.code == 2
    assert "semid fit: error: unrecognized arguments for fit: --k 3 --projection umap" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        parse_args(["train", "--config", "x.yaml"])
    assert done.value.code == 2 and "invalid choice: 'train'" in capsys.readouterr().err


def test_top_level_help_lists_every_verb_and_the_exit_codes(capsys):
    import semid_spark
    from semid_spark.cli import EXIT_CODES, VERBS, main

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(f" {verb} " in text for verb in VERBS) and "bench" in text
    assert all(f"{code} {what.split()[0]}" in text for code, what in EXIT_CODES.items())
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"semid_spark {semid_spark.__version__}"


def test_conf_flags_become_spark_settings_as_given():
    from semid_spark.cli import _conf_override

    cfg = JobConfig.from_dict({"input": {"path": "x"}}, [_conf_override("spark.sql.shuffle.partitions=400"),
                                                          _conf_override("spark.x.enabled=true")])
    assert cfg.spark.settings() == {"spark.sql.shuffle.partitions": "400", "spark.x.enabled": "true"}
    with pytest.raises(ConfigError, match=r"--conf 'spark.x': expected key=value"):
        _conf_override("spark.x")
