"""Every command, flag, make target, config key and package name in the README works as written:
``semid`` lines parse with the verb's own parser, ``make`` targets exist, ``--set`` keys are config
keys, and nothing asks pip for a package that is not on the index."""

import pathlib
import re
import shlex

import pytest

from semid_spark.cli import parse_args
from semid_spark.config import JobConfig
from semid_spark.config_reference import rows

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def shell_lines() -> list[str]:
    """The README's shell commands: lines of ```bash blocks (continuations joined, comments cut) and
    inline `semid …` / `make …` spans."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    lines += re.findall(r"`((?:semid|make) [^`]+)`", README)
    return lines


def semid_commands() -> list[list[str]]:
    out = []
    for line in shell_lines():
        for part in re.split(r"&&|;|\|", line):
            words = shlex.split(part.strip())
            if words[:1] == ["semid"] and len(words) > 1:
                out.append(words[1:])
            for script in ("jobs/run.py", "jobs/fit.py", "jobs/assign.py", "jobs/refit.py", "jobs/evaluate.py"):
                if script in words:  # spark-submit …: the entry point takes the verb's flags
                    verb = script.split("/")[1].removesuffix(".py")
                    out.append([verb, *words[words.index(script) + 1:]])
    return out


def test_the_readme_names_commands():
    assert len(semid_commands()) >= 8 and any(c[0] == "validate" for c in semid_commands())


@pytest.mark.parametrize("argv", semid_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_semid_commands_parse(argv):
    if argv[:2] == ["bench", "--shapes"]:  # semid bench --shapes [LIST] [flags]: the shapes bench's own parser
        from semid_spark.advise import parse_shape
        from semid_spark.bench.shapes import build_parser

        rest = argv[2:] if len(argv) == 2 or argv[2].startswith("-") else ["--shapes", *argv[2:]]
        shapes = build_parser().parse_args(rest).shapes
        assert all(parse_shape(s) for s in shapes.split(","))
        return
    if argv[:2] == ["bench", "--advice"]:
        from semid_spark.bench.advice import build_parser
        from semid_spark.advise import parse_shape

        args = build_parser().parse_args(argv[2:])
        assert all(parse_shape(s) for s in args.shapes.split(","))
        return
    if argv[:2] == ["bench", "--relocation"]:
        from semid_spark.bench.relocation import build_parser
        from semid_spark.advise import parse_shape

        args = build_parser().parse_args(argv[2:])
        assert all(parse_shape(s) for s in args.shapes.split(","))
        return
    if argv[0] == "bench":  # its own parsers (semid bench --help, semid bench --scale --help)
        assert set(a for a in argv[1:] if a.startswith("--")) <= {"--scale", "--sizes", "--quick", "--out", "--cores",
                                                                    "--baseline", "--work", "--skip-spark"}
        return
    if "--config" not in argv or argv[1:2] == ["--help"]:
        return  # an inline mention of a verb without its arguments
    args = parse_args(argv)
    raw = {"input": {"path": "x"}}
    JobConfig.from_dict(raw, args.set)  # every --set key is a config key with a valid value


def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    named = {word for line in shell_lines() for word in shlex.split(line)[1:2] if line.startswith("make ")}
    named |= set(re.findall(r"`make ([a-z][\w-]*)", README))
    assert named and named <= targets, named - targets


def test_config_keys_named_in_the_readme_exist():
    keys = {key for key, *_ in rows()}
    sections = {key.split(".")[0] for key in keys}
    named = {m for m in re.findall(r"`([a-z_]+\.[a-z_]+)[`:= ]", README) if m.split(".")[0] in sections}
    named -= {"model.pt"}  # semantic-id 0.2.5's file name, not a key
    assert named and named <= keys, sorted(named - keys)


def test_no_pip_install_of_a_package_that_is_not_on_the_index():
    for line in re.findall(r"pip install ([^`\n]+)", README):
        assert "semid-spark" not in line and "semid_spark[" not in line, line
