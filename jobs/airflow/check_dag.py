"""DAG integrity check (`make airflow-check`): the DAG imports under Airflow with no errors and
has the expected tasks, order, retries and templated spark-submit arguments."""

from __future__ import annotations

import os
import sys
import tempfile

try:  # Airflow 3.1+
    from airflow.dag_processing.dagbag import DagBag

    BAG_ARGS: dict = {}
except ImportError:  # Airflow 2.x
    from airflow.models.dagbag import DagBag

    BAG_ARGS = {"include_examples": False}

EXPECTED = {"choose_fit": {"fit", "refit", "skip_fit"}, "fit": {"assign"}, "refit": {"assign"}, "skip_fit": {"assign"},
            "assign": {"evaluate"}, "evaluate": set()}


def main() -> int:
    folder = os.path.dirname(os.path.abspath(__file__))
    bag = DagBag(dag_folder=folder, **BAG_ARGS)
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"import error in {path}:\n{error}")
        return 1
    dag = bag.dags.get("semid_spark_ids")  # from the parsed files; get_dag would also consult the metadata DB
    problems = []
    if dag is None:
        print(f"no DAG semid_spark_ids among {sorted(bag.dag_ids)}")
        return 1
    got = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    if got != EXPECTED:
        problems.append(f"tasks/order {got}, expected {EXPECTED}")
    for task in dag.tasks:
        if task.retries < 1:
            problems.append(f"{task.task_id}: no retries")
    assign = dag.get_task("assign")
    if assign.trigger_rule != "none_failed_min_one_success":
        problems.append(f"assign trigger rule {assign.trigger_rule}")
    if not any("ds={{ ds }}" in str(a) for a in assign.application_args):
        problems.append(f"assign does not read the logical date's snapshot: {assign.application_args}")
    if not dag.get_task("refit").application.endswith("/refit.py"):
        problems.append(f"refit runs {dag.get_task('refit').application}, not jobs/refit.py")
    choose = dag.get_task("choose_fit").python_callable
    with tempfile.TemporaryDirectory() as model_path:
        picks = [choose({"model_path": model_path, "refit": False})]
        open(os.path.join(model_path, "metadata.json"), "w").close()
        picks += [choose({"model_path": model_path, "refit": False}), choose({"model_path": model_path, "refit": True})]
    if picks != ["fit", "skip_fit", "refit"]:
        problems.append(f"choose_fit picked {picks} for (no model, model, model + refit)")
    import airflow

    print(f"Airflow {airflow.__version__}: DAG {dag.dag_id} imported, tasks {sorted(got)}; "
          f"order {' -> '.join(['choose_fit', '{fit|refit|skip_fit}', 'assign', 'evaluate'])}; retries "
          f"{sorted({t.retries for t in dag.tasks})}; choose_fit (no model, model, refit): {picks}; {len(problems)} problems")
    for p in problems:
        print("  ", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
