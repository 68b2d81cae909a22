"""spark-submit entry point: `spark-submit jobs/evaluate.py --config conf/cluster.example.yaml [--out DIR]`."""

import sys

from semid_spark.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]]))
