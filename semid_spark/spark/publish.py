"""A refit's new version is published all or nothing.

A version is published at one Delta commit that users' readers see, after every row it publishes
was encoded and checked and every gate passed:

- ``new_table``: the old table's successor properties name the new table (written before, complete,
  but named by nothing until then);
- ``keep_ids``: the MERGE of the new items' rows; a commit before it names its run as the table's
  pending switch, so that from the MERGE on the table is bound to the new model
  (``delta.table.bound_model``), and a commit after it records the switch in the table's own
  properties.

Until that commit the new model's directory holds ``UNPUBLISHED.json``, written before its arrays:
``semid run``/``assign`` refuse such a model, and the next refit saves the same version there again
(its digest names the path) and publishes it. A failure at any point before the commit (a bad row,
a gate, a concurrent run, kill -9) leaves the table bound to its old model with its old rows.
"""

from __future__ import annotations

import json

from semid_spark import storage
from semid_spark.exceptions import ModelFormatError

UNPUBLISHED_FILE = "UNPUBLISHED.json"


def save_unpublished(model, path: str, note: dict) -> None:
    """Save *model* at *path*, marked unpublished (the mark first: no moment shows it unmarked)."""
    storage.write_bytes(storage.join(path, UNPUBLISHED_FILE), json.dumps(note, indent=2, sort_keys=True).encode())
    model.save(path)


def mark_published(path: str) -> None:
    """Remove the unpublished mark of the model at *path* (once something published refers to it)."""
    storage.delete(storage.join(path, UNPUBLISHED_FILE))


def check_published(path: str) -> None:
    """Refuse the model at *path* (``model.path``) when a refit saved it and did not publish it."""
    if (note := unpublished_note(path)) is not None:
        raise ModelFormatError(
            f"model.path={path!r} holds a version that refit {note.get('refit_id')} of table {note.get('table')} saved "
            "and did not publish (it stopped, or failed, before the table named it). Run that `semid refit` again: it "
            "publishes this version, or records the switch if its table already holds rows of it")


def unpublished_note(path: str) -> dict | None:
    """The note of an unpublished model at *path* (which refit saved it, for which table), or None."""
    try:
        return json.loads(storage.read_bytes(storage.join(path, UNPUBLISHED_FILE)))
    except FileNotFoundError:
        return None
