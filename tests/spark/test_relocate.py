"""uniqueness.strategy in the job: relocate (the default) against suffix, the Python rule, increments, old tables."""

from collections import defaultdict

import numpy as np
import pytest
from pyspark.sql import functions as F

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.exceptions import QualityGateError
from semid_spark.spark import pipeline
from semid_spark.spark.evaluate import EvaluateOptions, evaluate_job
from semid_spark.uniqueness.relocate import relocate_codes
from tests.spark.conftest import catalog, config, frame, shuffles_carrying, write_input


def table_rows(spark, cfg):
    return {r.item_id: r for r in spark.read.format("delta").load(cfg.output.path).collect()}


@pytest.fixture(scope="module")
def relocated_run(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("relocate")
    keys, x = catalog(1500, seed=5)
    model = RQKMeans(3, [4, 4, 16], random_state=0).fit(x)
    model.save(str(tmp / "model"))
    write_input(spark, frame(spark, keys[:1200], x[:1200]), f"{tmp}/in")
    cfg = config(tmp, model={"path": str(tmp / "model"), "n_clusters": [4, 4, 16]})
    report = pipeline.run(spark, cfg)
    return tmp, cfg, report, keys, x, model


def test_relocated_codes_are_the_python_rules_and_keep_the_prefix(spark, relocated_run):
    tmp, cfg, report, keys, x, model = relocated_run
    rows = table_rows(spark, cfg)
    expected = relocate_codes(model, x[:1200], keys=keys[:1200])
    nearest = model.encode(x[:1200])
    assert len({r.semantic_id for r in rows.values()}) == len(rows) == 1200
    for i, key in enumerate(keys[:1200]):
        assert list(rows[key].codes) == expected.codes[i].tolist()
        assert rows[key].relocated == bool(expected.relocated[i])
        assert list(rows[key].codes[:2]) == nearest[i, :2].tolist()  # the prefix is the nearest codes'
        assert (rows[key].counter > 0) == bool(expected.unplaced[i])
    assert 0 < report.moved_share == pytest.approx(expected.moved_share)
    assert report.seconds["relocate"] > 0 and list(report.seconds).index("relocate") > list(report.seconds).index("encode")
    assert report.counter_share == pytest.approx(expected.unplaced.mean())
    assert report.error_ratio == pytest.approx(expected.error_ratio, rel=1e-5) and report.error_ratio >= 1.0


def test_the_placed_item_keeps_the_bare_code_and_the_rest_count_on_by_key(spark, relocated_run):
    tmp, cfg, report, keys, x, model = relocated_run
    by_code = defaultdict(list)
    for r in table_rows(spark, cfg).values():
        by_code[tuple(r.codes)].append(r)
    for members in by_code.values():
        counters = sorted(r.counter for r in members)
        assert counters == list(range(len(members)))
        left_over = sorted((r for r in members if r.counter > 0), key=lambda r: r.counter)
        assert [r.item_id for r in left_over] == sorted(r.item_id for r in left_over)


def test_relocation_fewer_counters_than_suffix_on_the_same_input(spark, relocated_run, tmp_path):
    tmp, cfg, report, keys, x, model = relocated_run
    suffix = config(tmp_path, model={"path": cfg.model.path, "n_clusters": [4, 4, 16]}, uniqueness={"strategy": "suffix"},
                    quality={"max_counter_share": 1.0})
    write_input(spark, frame(spark, keys[:1200], x[:1200]), suffix.input.path)
    suffix_report = pipeline.run(spark, suffix)
    rows = table_rows(spark, suffix)
    assert not any(r.relocated for r in rows.values())
    assert report.counter_share < suffix_report.counter_share
    assert suffix_report.moved_share is None


def test_an_increment_never_moves_a_written_item_and_relocates_around_written_codes(spark, relocated_run):
    tmp, cfg, report, keys, x, model = relocated_run
    before = table_rows(spark, cfg)
    write_input(spark, frame(spark, keys[1200:], x[1200:]), cfg.input.path, mode="append")
    pipeline.run(spark, cfg)
    after = table_rows(spark, cfg)
    assert all(after[k] == before[k] for k in before)
    assert len(after) == 1500 and len({r.semantic_id for r in after.values()}) == 1500
    held = np.array([list(r.codes) for r in before.values()])
    expected = relocate_codes(model, x[1200:], keys=keys[1200:], held=held)
    assert [list(after[k].codes) for k in keys[1200:]] == expected.codes.tolist()
    written_codes = {tuple(r.codes) for r in before.values()}
    for i, key in enumerate(keys[1200:]):
        if tuple(after[key].codes) in written_codes:  # a written code: a counter after the written ones
            assert after[key].counter > 0 and expected.unplaced[i]


def test_a_table_written_before_relocation_gains_the_column(spark, tmp_path):
    keys, x = catalog(600, seed=2)
    cfg = config(tmp_path, uniqueness={"strategy": "suffix"})
    write_input(spark, frame(spark, keys[:500], x[:500]), cfg.input.path)
    pipeline.run(spark, cfg)
    old = spark.read.format("delta").load(cfg.output.path).drop("relocated")  # as an earlier version wrote it
    old.localCheckpoint().write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(cfg.output.path)
    write_input(spark, frame(spark, keys[500:], x[500:]), cfg.input.path, mode="append")
    relocate = config(tmp_path)
    pipeline.run(spark, relocate)
    table = spark.read.format("delta").load(cfg.output.path)
    assert table.where(F.col("relocated").isNull()).count() == 500  # the old rows, untouched
    assert table.where(F.col("relocated").isNotNull()).count() == 100
    assert table.select("semantic_id").distinct().count() == 600


def test_the_counter_gate_judges_the_relocated_ids(spark, relocated_run, tmp_path):
    tmp, cfg, report, keys, x, model = relocated_run
    between = (report.counter_share + report.collision_share) / 2  # over relocate's share, under suffix's
    gated = config(tmp_path, model={"path": cfg.model.path, "n_clusters": [4, 4, 16]}, quality={"max_counter_share": between})
    write_input(spark, frame(spark, keys[:1200], x[:1200]), gated.input.path)
    passed = pipeline.run(spark, gated)
    assert passed.counter_share == pytest.approx(report.counter_share)
    suffix = config(tmp_path / "suffix", model={"path": cfg.model.path, "n_clusters": [4, 4, 16]}, uniqueness={"strategy": "suffix"},
                    quality={"max_counter_share": between})
    write_input(spark, frame(spark, keys[:1200], x[:1200]), suffix.input.path)
    with pytest.raises(QualityGateError, match="max_counter_share"):
        pipeline.run(spark, suffix)


def test_evaluate_reports_the_moved_and_counter_shares_of_the_table(spark, tmp_path):
    keys, x = catalog(800, seed=7)
    model = RQKMeans(3, [4, 4, 16], random_state=0).fit(x)
    model.save(str(tmp_path / "model"))
    cfg = config(tmp_path, model={"path": str(tmp_path / "model"), "n_clusters": [4, 4, 16]})
    write_input(spark, frame(spark, keys, x), cfg.input.path)
    report = pipeline.run(spark, cfg)
    quality, _ = evaluate_job(spark, cfg, EvaluateOptions(out_dir=str(tmp_path / "eval"), sample_size=800, k=5,
                                                          n_queries=100))
    assert quality.uniqueness["moved_share"] == pytest.approx(report.moved_share)
    assert quality.uniqueness["counter_share"] == pytest.approx(report.counter_share)
    assert quality.uniqueness["error_ratio"] == pytest.approx(report.error_ratio, rel=1e-4)
    assert "moved to a free last-level code" in open(tmp_path / "eval" / "report.md", encoding="utf-8").read()


@pytest.mark.parametrize("n_new", [1200, 0])  # the job's (counts checkpointed, broadcast) and the ML transform's
def test_codes_too_large_to_pack_relocate_as_packed_ones_do(spark, relocated_run, n_new):
    from semid_spark.delta.schema import CANDIDATES, CODES, DISTANCES
    from semid_spark.spark.ranking import is_packed, with_code_key
    from semid_spark.spark.strategies.relocate import relocated_rows
    from semid_spark.uniqueness.relocate import last_level_candidates

    _, _, _, keys, x, model = relocated_run
    codes = model.encode(x[:1200])
    cand, dist = last_level_candidates(model, x[:1200], codes, 16)
    encoded = spark.createDataFrame(
        [(k, c.tolist(), a.tolist(), d.tolist()) for k, c, a, d in zip(keys[:1200], codes, cand, dist)],
        f"item_id string, {CODES} array<int>, {CANDIDATES} array<int>, {DISTANCES} array<float>")
    unpackable = [1 << 31, 1 << 31, 16]  # the same last level, and 2^66 full codes: the key is the array
    assert not is_packed(unpackable) and is_packed([4, 4, 16])
    got = {}
    for sizes in ([4, 4, 16], unpackable):
        rows = relocated_rows(with_code_key(encoded, sizes), None, sizes, key_col="item_id", n_new=n_new, hot=[],
                              hot_code_rows=1_000_000)
        got[len(got)] = {r.item_id: (list(r.codes), r.counter, r.relocated) for r in rows.collect()}
    assert got[0] == got[1] and len(got[0]) == 1200
    assert sum(relocated for _, _, relocated in got[0].values()) > 0


def test_many_new_items_with_few_colliding_codes_shuffle_no_row_that_collides_with_nothing(spark, relocated_run,
                                                                                            monkeypatch):
    """A first run whose new items pass the broadcast limit, but whose colliding codes do not (a large shape),
    sends those codes to every task: the rows that collide with nothing cross no shuffle to learn it (at
    16M rows, 2048/1024/512/256, 0.01% of them collide). The same codes as relocate_codes either way."""
    from semid_spark.delta.schema import CANDIDATES, CODES, DISTANCES
    from semid_spark.spark import incremental
    from semid_spark.spark.ranking import with_code_key
    from semid_spark.spark.strategies.relocate import relocated_rows
    from semid_spark.uniqueness.relocate import last_level_candidates

    _, _, _, keys, x, model = relocated_run
    codes = model.encode(x[:1200])
    cand, dist = last_level_candidates(model, x[:1200], codes, 16)
    encoded = with_code_key(spark.createDataFrame(
        [(k, c.tolist(), a.tolist(), d.tolist()) for k, c, a, d in zip(keys[:1200], codes, cand, dist)],
        f"item_id string, {CODES} array<int>, {CANDIDATES} array<int>, {DISTANCES} array<float>"), [4, 4, 16])
    expected = relocate_codes(model, x[:1200], keys=keys[:1200]).codes.tolist()
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")  # as at catalog scale
    spark.conf.set("spark.sql.adaptive.enabled", "false")  # the plan as it runs
    exchanges = {}
    try:
        for limit in (1199, 0):  # over the 1,200 new items but not their colliding codes; nothing broadcast
            monkeypatch.setattr(incremental, "BROADCAST_KEYS", limit)
            rows = relocated_rows(encoded, None, [4, 4, 16], key_col="item_id", n_new=1200, hot=[], hot_code_rows=10**6)
            exchanges[limit] = shuffles_carrying(rows, "item_id")
            got = {r.item_id: list(r.codes) for r in rows.collect()}
            assert [got[k] for k in keys[:1200]] == expected
    finally:
        spark.conf.unset("spark.sql.autoBroadcastJoinThreshold")
        spark.conf.unset("spark.sql.adaptive.enabled")
    assert len(exchanges[1199]) < len(exchanges[0]), exchanges


def relocated_in_spark(spark, relocated_run, **solver) -> list:
    """The job's relocation (``relocated_rows``, a first run) of the fixture's first 1,200 items, from
    their codes and candidates, as collected rows."""
    from semid_spark.delta.schema import CANDIDATES, CODES, DISTANCES
    from semid_spark.spark.ranking import with_code_key
    from semid_spark.spark.strategies import relocate as strategy
    from semid_spark.uniqueness.relocate import last_level_candidates

    _, _, _, keys, x, model = relocated_run
    codes = model.encode(x[:1200])
    cand, dist = last_level_candidates(model, x[:1200], codes, 16)
    encoded = spark.createDataFrame(
        [(k, c.tolist(), a.tolist(), d.tolist()) for k, c, a, d in zip(keys[:1200], codes, cand, dist)],
        f"item_id string, {CODES} array<int>, {CANDIDATES} array<int>, {DISTANCES} array<float>")
    sizes = [4, 4, 16]
    return strategy.relocated_rows(with_code_key(encoded, sizes), None, sizes, key_col="item_id", n_new=1200, hot=[],
                                   hot_code_rows=1_000_000, **solver).collect()


@pytest.mark.parametrize("hot_factor", [0, 1, 32])  # every prefix hot, the crowded ones, none (the default)
def test_hot_prefixes_pruned_in_spark_relocate_as_the_others_do(spark, relocated_run, monkeypatch, hot_factor):
    """A prefix over HOT_PREFIX_FACTOR x K new items has its edges exploded and pruned by windows; the
    others are solved in one cogrouped pandas call per bucket: both give relocate_codes' codes."""
    from semid_spark.spark.strategies import relocate as strategy

    _, _, _, keys, x, model = relocated_run
    monkeypatch.setattr(strategy, "HOT_PREFIX_FACTOR", hot_factor)
    rows = relocated_in_spark(spark, relocated_run)
    expected = relocate_codes(model, x[:1200], keys=keys[:1200])
    got = {r.item_id: list(r.codes) for r in rows}
    assert [got[k] for k in keys[:1200]] == expected.codes.tolist()
    assert sorted(k for k in keys[:1200] if [r for r in rows if r.item_id == k][0].counter > 0) == sorted(
        np.asarray(keys[:1200])[expected.unplaced].tolist())


@pytest.mark.parametrize("hot_factor", [0, 32])
def test_the_exact_solver_in_spark_gives_relocate_codes_exact_answer(spark, relocated_run, monkeypatch, hot_factor):
    """uniqueness.relocate_solver: exact reaches both of the job's placement paths (hot prefixes pruned in
    Spark, the others per bucket) and gives relocate_codes(solver="exact")'s codes, which here differ
    from greedy's (crowded prefixes, 16 codes)."""
    from semid_spark.spark.strategies import relocate as strategy

    _, _, _, keys, x, model = relocated_run
    monkeypatch.setattr(strategy, "HOT_PREFIX_FACTOR", hot_factor)
    rows = relocated_in_spark(spark, relocated_run, solver="exact")
    exact = relocate_codes(model, x[:1200], keys=keys[:1200], solver="exact")
    greedy = relocate_codes(model, x[:1200], keys=keys[:1200])
    got = {r.item_id: list(r.codes) for r in rows}
    assert [got[k] for k in keys[:1200]] == exact.codes.tolist()
    assert exact.codes.tolist() != greedy.codes.tolist()
