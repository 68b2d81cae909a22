"""spark-submit entry point: `spark-submit jobs/refit.py --config conf/cluster.example.yaml [--set k=v ...]`."""

import sys

from semid_spark.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["refit", *sys.argv[1:]]))
