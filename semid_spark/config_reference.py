"""The job config's reference (``docs/config.md``), built from the config classes themselves.

Each key's type and default come from its dataclass field; what it does comes from the comment on
the field's line or the comment lines just above it in ``config.py``, so documenting a key is
writing that comment. ``python -m semid_spark.config_reference > docs/config.md`` writes the page;
a test keeps the page and the classes equal.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize
from typing import get_type_hints

from semid_spark import config
from semid_spark.config import JobConfig, _describe

INTRO = """# Job config reference

A job reads one YAML file (`--config`, a local path or a URL) with these sections; every key is optional
except `input.path` or `input.table`. `--set section.key=value` overrides one key (the value is parsed as
YAML: `--set model.n_clusters=[2048,1024,512]`); a dict key takes the rest of the path as its key:
`--set spark.conf.spark.executor.memory=2g`. Unknown keys and bad values fail before Spark starts, naming
the key and where its value came from. Generated from `semid_spark/config.py` by
`python -m semid_spark.config_reference`; do not edit by hand.
"""


def field_comments() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment that documents it in ``config.py``."""
    source = inspect.getsource(config)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            above, row = [], item.lineno - 1
            while row >= 1 and lines[row - 1].strip().startswith("#"):
                above.insert(0, comments[row])
                row -= 1
            text = " ".join(above + ([comments[item.lineno]] if item.lineno in comments else []))
            found[(node.name, item.target.id)] = text
    return found


def rows() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, what it does) for every key of every section, in declaration order."""
    comments = field_comments()
    out = []
    for section in dataclasses.fields(JobConfig):
        cls = get_type_hints(JobConfig)[section.name]
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = "null" if f.default is None else repr(f.default)
            else:
                default = repr(f.default_factory())  # type: ignore[misc]
            out.append((f"{section.name}.{f.name}", _describe(hints[f.name]), default,
                        comments.get((cls.__name__, f.name), "")))
    return out


def sections() -> dict[str, str]:
    """Section name -> its class docstring's first paragraph (may be empty)."""
    hints = get_type_hints(JobConfig)
    return {f.name: " ".join((inspect.getdoc(hints[f.name]) or "").split("\n\n")[0].split())
            if hints[f.name].__doc__ and not hints[f.name].__doc__.startswith(hints[f.name].__name__ + "(") else ""
            for f in dataclasses.fields(JobConfig)}


def markdown() -> str:
    text = [INTRO]
    about = sections()
    current = None
    for key, kind, default, doc in rows():
        section = key.split(".")[0]
        if section != current:
            current = section
            text += [f"\n## `{section}:`\n", *( [about[section] + "\n"] if about[section] else []),
                     "| key | type | default | what it does |", "|---|---|---|---|"]
        cell = doc.replace("|", "\\|").replace("<", "&lt;")
        text.append(f"| `{key}` | {kind.replace('|', '/')} | `{default}` | {cell} |")
    return "\n".join(text) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
