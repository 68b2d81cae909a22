"""Progress bars: shown when asked (notebooks, terminals, --verbose), never with --quiet."""

import pytest

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.cli import parse_args
from semid_spark.utils.progress import Steps, set_progress


@pytest.fixture(autouse=True)
def restore():
    yield
    set_progress(None)


def test_fit_shows_a_bar_only_when_progress_is_on(X, capsys):
    set_progress(True)
    RQKMeans(3, 8, random_state=0).fit(X)
    assert "RQ-KMeans fit (1,500 rows)" in capsys.readouterr().err
    set_progress(False)
    RQKMeans(3, 8, random_state=0).fit(X)
    assert "RQ-KMeans" not in capsys.readouterr().err


def test_steps_bar_names_the_current_step(capsys):
    set_progress(True)
    step = Steps("semid evaluate", 2)
    step("exact counts")
    step("sample")
    step.close()
    err = capsys.readouterr().err
    assert "semid evaluate: exact counts" in err and "semid evaluate: sample" in err


def test_quiet_and_verbose_exclude_each_other(capsys):
    assert parse_args(["run", "--config", "c.yaml", "--quiet"]).quiet
    with pytest.raises(SystemExit):
        parse_args(["run", "--config", "c.yaml", "--quiet", "--verbose"])
    assert "not allowed with argument" in capsys.readouterr().err
