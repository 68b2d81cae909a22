"""What a run prints: the JVM's own output kept out of the way, and progress inside long stages.

A session the job starts itself launches a JVM that inherits the terminal: Ivy's resolution of
Delta's jars, log4j's startup warnings and Java stack traces would land among our lines (~100 of
them a run). The CLI sends that JVM's stdout and stderr to a file instead (``--verbose`` keeps
them on the terminal) and names the file; the JVM also gets the package's ``log4j2.properties``
(warnings and errors only, the known noise silenced).

``StageProgress`` polls Spark's status tracker while a stage runs: tasks done of the total and,
when the caller knows how many rows the stage reads, rows per second; a tqdm bar where progress
bars show (a terminal, a notebook), a log line every ``LOG_EVERY_S`` seconds elsewhere (Airflow,
a Databricks job's driver log).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from importlib import resources
from typing import Iterator

from semid_spark.utils.progress import progress_enabled

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0  # a progress line this often where no bar shows
POLL_S = 0.5

_hide_jvm_output = False
_jvm_log: str | None = None


def hide_jvm_output(hide: bool) -> None:
    """True (the CLI without ``--verbose``): a JVM this process launches writes to a file, not the terminal."""
    global _hide_jvm_output
    _hide_jvm_output = hide


def jvm_log_path() -> str | None:
    """Where the JVM launched by this process writes its output, when it was sent to a file."""
    return _jvm_log


def log4j2_properties() -> str:
    """The package's log4j2 configuration file, as a path the JVM can read."""
    return str(resources.files("semid_spark.spark").joinpath("log4j2.properties"))


@contextlib.contextmanager
def jvm_output() -> Iterator[None]:
    """Around the launch of the JVM: when hidden, its stdout and stderr (inherited file descriptors 1
    and 2) go to a log file for the JVM's whole life; ours are restored once it started."""
    global _jvm_log
    if not _hide_jvm_output:
        yield
        return
    folder = os.path.join(tempfile.gettempdir(), "semid_spark")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"spark-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as target:
        os.dup2(target.fileno(), 1)
        os.dup2(target.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    _jvm_log = path
    log.info("Spark's own output goes to %s (--verbose shows it here)", path)


class StageProgress:
    """Progress of the Spark jobs started under one job description, polled on a daemon thread."""

    def __init__(self, sc, description: str, rows: int | None = None) -> None:
        self.sc, self.description, self.rows = sc, description, rows
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="semid-progress", daemon=True)
        self._bar = None
        self._start = time.perf_counter()

    def __enter__(self) -> "StageProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * POLL_S)
        if self._bar is not None:
            self._bar.close()

    def tasks(self) -> tuple[int, int]:
        """(tasks done, tasks known) over the active stages of this stage's jobs."""
        tracker = self.sc.statusTracker()
        done = total = 0
        for stage_id in tracker.getActiveStageIds():
            info = tracker.getStageInfo(stage_id)
            if info is None:
                continue
            done += info.numCompletedTasks
            total += info.numTasks
        return done, total

    def line(self, done: int, total: int) -> str:
        elapsed = time.perf_counter() - self._start
        text = f"{self.description}: {done}/{total} tasks, {elapsed:.0f} s"
        if self.rows and total and done:
            text += f", ~{self.rows * done / total / elapsed:,.0f} rows/s"
        return text

    def _poll(self) -> None:
        bar = progress_enabled()
        last_log = time.perf_counter()
        while not self._stop.wait(POLL_S):
            try:
                done, total = self.tasks()
            except Exception:  # the context stopped under us: nothing to report
                return
            if not total:
                continue
            if bar:
                self._show_bar(done, total)
            elif time.perf_counter() - last_log >= LOG_EVERY_S:
                last_log = time.perf_counter()
                log.info("%s", self.line(done, total))

    def _show_bar(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=self.description.removeprefix("semid: "), unit="task", leave=False,
                             dynamic_ncols=True)
        if self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        if self.rows:
            elapsed = time.perf_counter() - self._start
            self._bar.set_postfix_str(f"~{self.rows * done / total / max(elapsed, 1e-9):,.0f} rows/s", refresh=False)
        self._bar.refresh()
