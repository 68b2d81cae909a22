"""`semid run` in its own process, with one fault injected where a test wants it (test code, not the package's).

    python -m tests.fault_job --config job.yaml --signal DIR --fault stall-merge
        The MERGE's source rows pass through a step that hands its task's rows to the writer, then
        writes DIR/stalled and waits forever: the test kills the process (kill -9) in the write stage.
    python -m tests.fault_job --config job.yaml --signal DIR --fault kill-python-worker
        The first attempt of one encode task kills its own Python worker (SIGKILL); with
        spark.master local[N,4] Spark retries it, and the run must end as a fault-free one would.
    python -m tests.fault_job --config job.yaml --signal DIR --verb refit --fault stall-at --at MODULE:FUNCTION
        When FUNCTION of MODULE is first called, the process writes DIR/stalled and waits forever: the
        test kills it (kill -9) at that step (e.g. between a refit's commits).
    python -m tests.fault_job --config job.yaml --signal DIR --fault barrier-merge --name A --peer B
        Before its MERGE reads its source, the run writes DIR/A and waits for DIR/B: two such
        runs merge against the same snapshot, so one of them meets a commit conflict.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time



def _passthrough(df, step):
    return df.mapInArrow(step, df.schema)


def stall_merge(signal_dir: str):
    from semid_spark.spark import assign

    real = assign.merge_new_rows

    def step(batches):
        yield from batches  # the writer has these rows in its open data file ...
        open(os.path.join(signal_dir, "stalled"), "w").close()
        while True:  # ... and never gets to close it
            time.sleep(1)

    assign.merge_new_rows = lambda spark, ref, rows, key, **kw: real(spark, ref, _passthrough(rows, step), key, **kw)


def kill_python_worker(signal_dir: str):
    from semid_spark.spark import assign

    real, real_files = assign.encode_embeddings, assign.encode_files

    def step(batches):
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx.partitionId() == 0 and ctx.attemptNumber() == 0:
            open(os.path.join(signal_dir, "killed"), "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        yield from batches

    assign.encode_embeddings = lambda df, *a, **kw: _passthrough(real(df, *a, **kw), step)
    # a first run reads the input's files on executors: that pass's worker is the one killed
    assign.encode_files = lambda *a, **kw: _passthrough(real_files(*a, **kw), step)


def stall_at(signal_dir: str, where: str):
    import importlib

    module_name, name = where.split(":")
    module = importlib.import_module(module_name)
    getattr(module, name)  # an unknown step is the test's error, said at once

    def stall(*args, **kwargs):
        open(os.path.join(signal_dir, "stalled"), "w").close()
        while True:
            time.sleep(1)

    setattr(module, name, stall)


def barrier_merge(signal_dir: str, name: str, peer: str):
    from semid_spark.spark import assign

    real = assign.merge_new_rows
    calls = []

    def merge(spark, ref, rows, key, **kw):
        calls.append(1)
        if len(calls) == 1:  # the first attempt only: a retry merges at once
            open(os.path.join(signal_dir, name), "w").close()
            deadline = time.time() + 120
            while not os.path.exists(os.path.join(signal_dir, peer)) and time.time() < deadline:
                time.sleep(0.2)
        return real(spark, ref, rows, key, **kw)

    assign.merge_new_rows = merge


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--signal", required=True)
    parser.add_argument("--fault", choices=["stall-merge", "stall-at", "kill-python-worker", "barrier-merge", "none"],
                        required=True)
    parser.add_argument("--verb", choices=["run", "refit"], default="run")
    parser.add_argument("--at", help="stall-at: MODULE:FUNCTION")
    parser.add_argument("--name", default="A")
    parser.add_argument("--peer", default="B")
    args = parser.parse_args(argv)
    if args.fault == "stall-merge":
        stall_merge(args.signal)
    elif args.fault == "stall-at":
        stall_at(args.signal, args.at)
    elif args.fault == "kill-python-worker":
        kill_python_worker(args.signal)
    elif args.fault == "barrier-merge":
        barrier_merge(args.signal, args.name, args.peer)
    from semid_spark.cli import main as semid

    extra = ["--out", os.path.join(args.signal, "report")] if args.verb == "refit" else []
    return semid([args.verb, "--config", args.config, *extra])


if __name__ == "__main__":
    sys.exit(main())
