"""Job configs: YAML in conf/ loads, overrides apply, unknown keys and bad values are named."""

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
        ({"input": {"path": "x"}, "modle": {}}, [], r"config: unknown key\(s\) \['modle'\]; valid keys: \['encode', 'input'"),
        ({"input": {"path": "x", "keycol": "id"}}, [], r"config.input: unknown key\(s\) \['keycol'\]; valid keys: .*'key_col'"),
        ({"input": {"path": "x"}}, ["model.kind=kmeans"], r"config.model.kind='kmeans': expected one of 'rq_kmeans', 'rq_vae'"),
        ({"input": {"path": "x"}}, ["model.n_clusters=many"], r"config.model.n_clusters='many': expected int"),
        ({"input": {"path": "x"}}, ["model.n_clusters=1"], r"n_clusters=1"),
        ({"input": {}}, [], r"exactly one of input.path or input.table"),
        ({"input": {"path": "x", "on_invalid": "reject"}}, [], r"needs input.reject_path"),
        ({"input": {"path": "x"}}, ["n_clusters=3"], r"expected section.key=value"),
        ({"input": {"path": "x"}}, ["uniqueness.strategy=move"], r"uniqueness.strategy='move'; expected 'relocate' or 'suffix'"),
        ({"input": {"path": "x"}}, ["uniqueness.relocate_candidates=1"], r"uniqueness.relocate_candidates=1; expected an int >= 2"),
        ({"input": {"path": "x"}}, ["output.on_refit=replace"], r"config.output.on_refit='replace': expected one of 'new_table', 'keep_ids'"),
        ({"input": {"path": "x"}, "output": {"refit_path": "a", "refit_table": "b"}}, [], r"one of output.refit_path or output.refit_table"),
        ({"input": {"path": "x"}}, ["quality.max_churn=1.5"], r"quality.max_churn=1.5; expected a share between 0 and 1"),
        ({}, [], r"config: input\(\) missing|missing 1 required"),
    ],
)
def test_bad_configs_are_named(raw, overrides, message):
    with pytest.raises(ConfigError, match=message):
        JobConfig.from_dict(raw, overrides)


def test_cli_arguments():
    args = parse_args(["run", "--config", "conf/demo.yaml", "--set", "model.seed=3", "--set", "encode.device=cpu"])
    assert args.command == "run" and args.set == ["model.seed=3", "encode.device=cpu"]
    with pytest.raises(SystemExit):
        parse_args(["train", "--config", "x.yaml"])
