"""The container image's recipe, checked from the Dockerfile text (no Docker engine needed)."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword and the rest of its (joined) line."""

    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array form of CMD, ENTRYPOINT, VOLUME, ..."""
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} is not in exec (JSON) form"
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions: comments dropped, continuations joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Group instructions by build stage (each starts with FROM)."""
    groups: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            groups.append([])
        assert groups, f"{ins.keyword} before the first FROM"
        groups[-1].append(ins)
    return groups


def only(stage: list[Instruction], keyword: str) -> Instruction:
    """The single instruction with this keyword in a stage."""
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def dockerfile() -> list[list[Instruction]]:
    """The repository's Dockerfile, split into stages."""
    return stages(parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8")))


def test_the_parser_joins_continuations_and_drops_comments() -> None:
    text = "# c\nFROM a AS b\nRUN one \\\n  # inside\n  && two\nCMD [\"x\"]\n"
    assert parse_dockerfile(text) == [
        Instruction("FROM", "a AS b"),
        Instruction("RUN", "one  && two"),
        Instruction("CMD", '["x"]'),
    ]


def test_it_builds_a_wheel_in_one_stage_and_runs_on_python_slim_in_another(
    dockerfile: list[list[Instruction]],
) -> None:
    assert len(dockerfile) == 2
    builder, runtime = dockerfile
    assert re.fullmatch(r"python:3\.11-slim\S* AS builder", builder[0].args)
    assert re.fullmatch(r"python:3\.11-slim\S* AS runtime", runtime[0].args)
    assert any("pip wheel" in i.args for i in builder if i.keyword == "RUN")


def test_the_runtime_installs_only_the_wheels_and_never_the_dev_extra(
    dockerfile: list[list[Instruction]],
) -> None:
    runtime = dockerfile[1]
    installs = [i.args for i in runtime if i.keyword == "RUN" and "pip install" in i.args]
    assert len(installs) == 1
    assert "--no-index" in installs[0]
    assert "from=builder" in installs[0]
    assert "[dev]" not in installs[0]
    copies = [i.args for i in runtime if i.keyword in ("COPY", "ADD")]
    assert not copies, f"the runtime stage copies files in: {copies}"


def test_the_builder_copies_exactly_what_pyproject_needs_to_build(
    dockerfile: list[list[Instruction]],
) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    copied = set()
    for ins in dockerfile[0]:
        if ins.keyword == "COPY":
            *sources, _dest = ins.args.split()
            copied.update(s.rstrip("/") for s in sources)
    assert "pyproject.toml" in copied
    assert pyproject["project"]["readme"] in copied
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert all(p.rstrip("*") in copied for p in packages)
    for path in copied:
        assert (ROOT / path).exists(), f"COPY {path}: no such file in the repository"


def test_it_runs_as_a_numeric_non_root_user_after_the_last_install(
    dockerfile: list[list[Instruction]],
) -> None:
    runtime = dockerfile[1]
    user = only(runtime, "USER")
    uid, _, gid = user.args.partition(":")
    # A numeric UID is what lets Kubernetes' runAsNonRoot verify the image.
    assert re.fullmatch(r"[1-9][0-9]{3,}", uid)
    assert re.fullmatch(r"[1-9][0-9]*", gid)
    last_run = max(i for i, ins in enumerate(runtime) if ins.keyword == "RUN")
    assert runtime.index(user) > last_run
    assert f"--uid {uid}" in "".join(i.args for i in runtime if i.keyword == "RUN")


def test_it_serves_the_mounted_config_through_the_breakglass_entrypoint(
    dockerfile: list[list[Instruction]],
) -> None:
    runtime = dockerfile[1]
    assert only(runtime, "ENTRYPOINT").exec_form() == ["breakglass"]
    assert only(runtime, "CMD").exec_form() == ["serve", "-c", "/etc/breakglass/config.yaml"]
    assert only(runtime, "EXPOSE").args == "8787"
    assert "/var/lib/breakglass" in only(runtime, "VOLUME").exec_form()


def test_the_healthcheck_asks_healthz_with_python_not_curl(
    dockerfile: list[list[Instruction]],
) -> None:
    check = only(dockerfile[1], "HEALTHCHECK")
    options, _, command = check.args.partition("CMD ")
    assert "--timeout=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8787/healthz" in argv[2]
    assert "urllib.request" in argv[2]
    assert not re.search(r"\b(curl|wget)\b", check.args)
    compile(argv[2], "<healthcheck>", "exec")


# --- .dockerignore -------------------------------------------------------------------------


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's path glob: `*` and `?` stay inside one folder, `**` crosses folders."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves path out of the build context (the last matching rule wins)."""
    parts = path.split("/")
    # A rule that matches a folder also excludes everything inside it.
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = glob_regex(raw.removeprefix("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def ignore_rules() -> list[str]:
    """The .dockerignore rules, without comments and blank lines."""
    text = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "tests/test_config.py",
        "bench/detection.py",
        "breakglass/__pycache__/cli.cpython-311.pyc",
        "breakglass/web/__pycache__/app.cpython-311.pyc",
        "breakglass.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/nodeids",
        "docs/operations.md",
        "deploy/k8s/deployment.yaml",
        "state/breakglass.db",
        "breakglass.db",
        "keys/pve_ed25519",
        ".env",
    ],
)
def test_dockerignore_keeps_tooling_caches_and_secrets_out_of_the_context(
    ignore_rules: list[str], path: str
) -> None:
    assert dockerignore_excludes(ignore_rules, path)


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "README.md", "breakglass/cli.py", "breakglass/agent/prompt.md"]
)
def test_dockerignore_keeps_what_the_build_copies(ignore_rules: list[str], path: str) -> None:
    assert not dockerignore_excludes(ignore_rules, path)


def test_the_dockerignore_matcher_honours_negation_and_folders() -> None:
    rules = ["docs", "!docs/keep.md", "**/*.pyc"]
    assert dockerignore_excludes(rules, "docs/a/b.md")
    assert not dockerignore_excludes(rules, "docs/keep.md")
    assert dockerignore_excludes(rules, "a/b/c.pyc")
    assert dockerignore_excludes(rules, "c.pyc")
    assert not dockerignore_excludes(rules, "src/docs.py")
