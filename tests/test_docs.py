"""docs/operations.md cannot drift: its `sh run` blocks run, its `sh parse` blocks parse.

Every shell block in the guide is fenced as ```` ```sh run ```` or ```` ```sh parse ````.
``run`` blocks are executed in order, each by ``bash -euo pipefail``, in one
temporary folder that holds links to the repository's deploy/ and config/
folders and a ``config.yaml`` watching a running simulator. ``parse`` blocks
(commands for real hosts) must pass ``bash -n``, and every ``breakglass`` and
``install.py`` command in them, and in the prose, must be accepted by the real
argument parsers. ``make docs-check`` runs this file.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from breakglass.cli import build_parser
from breakglass.sim.runner import SimHandle

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "operations.md"
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its info string (``sh run``), its text, and its first line number."""

    info: str
    text: str
    line: int


def blocks(path: Path = GUIDE) -> list[Block]:
    """Every fenced block of a Markdown file, indentation removed."""
    out: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        out.append(Block(m["info"].strip(), textwrap.dedent("\n".join(body)) + "\n", start))
        i += 1
    return out


def shell_blocks(kind: str) -> list[Block]:
    """The ``sh run`` or ``sh parse`` blocks."""
    return [b for b in blocks() if b.info == f"sh {kind}"]


def commands(text: str) -> list[list[str]]:
    """The simple commands of a shell text: continuations joined, comments dropped, split at ; && | ."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out: list[list[str]] = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        current: list[str] = []
        for word in [*words, ";"]:
            if word in (";", "&&", "||", "|"):
                if current:
                    out.append(current)
                current = []
            else:
                current.append(word)
    return out


def load_script(name: str) -> ModuleType:
    """A file of deploy/pve/ (install.py, breakglass-verbs) as a module."""
    path = ROOT / "deploy" / "pve" / name
    module_name = "pve_" + re.sub(r"\W", "_", name)
    loader = importlib.machinery.SourceFileLoader(module_name, str(path))
    spec = importlib.util.spec_from_loader(module_name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def load_installer() -> ModuleType:
    """deploy/pve/install.py as a module, for its argument parser."""
    return load_script("install.py")


SUBCOMMANDS = ("serve", "demo", "sim", "probe", "trigger", "check-config", "doctor")


def our_commands(words: list[str]) -> tuple[str, list[str]] | None:
    """('breakglass' | 'install.py', its arguments) when the command runs one of ours."""
    for i, word in enumerate(words):
        if word.endswith("install.py"):
            return "install.py", words[i + 1:]
        if word.endswith("breakglass") and i + 1 < len(words) and words[i + 1] in SUBCOMMANDS:
            return "breakglass", words[i + 1:]
    return None


def test_every_shell_block_is_marked_run_or_parse() -> None:
    found = [b for b in blocks() if b.info.split()[:1] == ["sh"]]
    assert found, "no shell block found"
    unmarked = [f"line {b.line}: {b.info!r}" for b in found if b.info not in ("sh run", "sh parse")]
    assert not unmarked, unmarked
    assert len(shell_blocks("run")) >= 5
    assert set(SUBCOMMANDS) <= set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


@pytest.mark.parametrize("block", shell_blocks("parse"), ids=lambda b: f"line{b.line}")
def test_each_parse_block_is_valid_shell(block: Block) -> None:
    proc = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True, timeout=30,
                          check=False)
    assert proc.returncode == 0, f"line {block.line}: {proc.stderr}"


def inline_commands() -> list[list[str]]:
    """`breakglass ...` and `... install.py ...` commands written inline in the prose."""
    text = re.sub(r"^\s*```.*?^\s*```\s*$", "", GUIDE.read_text(encoding="utf-8"), flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]*(?:breakglass [a-z-]+ |install\.py )[^`\n]*)`", text.replace("\n", " "))
    return [c for span in spans for c in commands(span)]


def test_every_breakglass_and_installer_command_in_the_guide_parses() -> None:
    checked = 0
    installer = load_installer().build_parser()
    for words in [c for b in shell_blocks("parse") + shell_blocks("run") for c in commands(b.text)] + \
            inline_commands():
        ours = our_commands(words)
        if ours is None:
            continue
        name, args = ours
        parser = build_parser() if name == "breakglass" else installer
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{name} {' '.join(args)}: the parser refused it (exit {exc.code})")
        checked += 1
    assert checked >= 10, checked


def test_every_repository_path_the_guide_names_exists() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w/.])((?:deploy|config|dashboards|docs|tests)/[\w./-]*[\w])", text))
    assert len(named) >= 10
    # `kubectl ... deploy/breakglass` names the Deployment, not a folder.
    missing = sorted(p for p in named - {"deploy/breakglass"} if not (ROOT / p).exists())
    assert not missing, missing


def test_the_run_blocks_pass_in_order_against_a_simulator(sim: SimHandle, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("sudo") is None:
        pytest.skip("SKIPPED LOUDLY: the guide's run blocks chown files with sudo; run as root with sudo")
    work = tmp_path / "work"
    work.mkdir()
    for name in ("deploy", "config"):
        (work / name).symlink_to(ROOT / name)
    shutil.copy(sim.config_path, work / "config.yaml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": str(tmp_path)}
    outputs: list[str] = []
    for block in shell_blocks("run"):
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=work, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"line {block.line}:\n{block.text}\n{proc.stdout}\n{proc.stderr}"
        outputs.append(proc.stdout)
    # What the blocks were meant to produce.
    assert "all 12 checks passed" in "".join(outputs)
    etc = work / "etc-breakglass"
    assert (etc / "config.yaml").read_text(encoding="utf-8").startswith("store_path: /var/lib/breakglass/")
    assert len((etc / "tokens" / "web_token").read_text(encoding="utf-8").strip()) == 64
    assert (etc / "ssh" / "pve_ed25519").stat().st_uid == 10001
    assert oct((etc / "ssh" / "pve_ed25519").stat().st_mode & 0o777) == "0o400"


def test_the_guide_goes_from_prerequisites_to_live_in_the_order_an_operator_works() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    titles = re.findall(r"^## (.+)$", text, re.M)
    assert titles[:7] == [
        "1. Prerequisites", "2. The Proxmox side", "3. The devvm side", "4. The watchdog",
        "5. `breakglass doctor`", "6. A day in dry run", "7. Live",
    ], titles
    prerequisites = text.split("## 1. Prerequisites")[1].split("## 2.")[0]
    assert "qemu-guest-agent" in prerequisites
    assert "qm set 102 --agent enabled=1" in prerequisites
    watchdog = text.split("## 4. The watchdog")[1].split("## 5.")[0]
    for way in ("### 4.2 With systemd", "### 4.3 In a container", "### 4.4 In Kubernetes"):
        assert way in watchdog
    assert "port-forward" in watchdog
    assert "ingress.example.yaml" in watchdog
    assert "Edit the hosts and the VM id in `deploy/k8s/configmap.yaml`" in watchdog


# --- timing the docs state, against the code -------------------------------------------------

DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KEY = r"`(?P<key>[a-z_]+(?:\.[a-z_]+)+)`"
AMOUNT = r"(?P<value>[0-9.]+(?: ?(?:s|min|h)\b)?)"
# The ways the docs state a setting's default.
DEFAULT_PHRASES = [
    re.compile(KEY + r",? \(default " + AMOUNT),  # `x` (default 180) / `x` (default 4 h, ...)
    re.compile(KEY + r", default " + AMOUNT),  # `x`, default 30 s
    re.compile(KEY + r" \(" + AMOUNT + r" by default\)"),  # `x` (8 s by default)
    re.compile(KEY + r" at " + AMOUNT + r" \(the default\)"),  # `x` at 10 (the default)
    re.compile(KEY + r" \(" + AMOUNT + r"[,;)]"),  # `x` (6 h) / `x` (30 s); ...
    re.compile(r"\(" + KEY + r", " + AMOUNT + r"\)"),  # (`x`, 180 s)
]
UNITS = {"": 1.0, "s": 1.0, "min": 60.0, "h": 3600.0}


def prose(path: Path) -> str:
    """A Markdown file's text with every run of whitespace made one space."""
    return re.sub(r"\s+", " ", path.read_text(encoding="utf-8"))


def config_default(dotted: str) -> object:
    """The default of a setting named ``section.key`` (or deeper), from the config model."""
    from breakglass.config import Config

    section, *rest = dotted.split(".")
    node: object = Config.model_fields[section].default
    for part in rest:
        node = getattr(node, part)
    return node


def documented_defaults() -> list[tuple[str, str, str]]:
    """(file, setting, stated default) for every default the docs state."""
    found = []
    for path in DOCS:
        text = prose(path)
        for phrase in DEFAULT_PHRASES:
            found += [(path.name, m["key"], m["value"]) for m in phrase.finditer(text)]
    return found


def test_every_default_the_docs_state_is_the_configs_default() -> None:
    stated = documented_defaults()
    assert len(stated) >= 10, stated
    keys = {key for _, key, _ in stated}
    assert "probe.status_timeout_seconds" in keys
    for name, key, value in stated:
        number, unit = re.fullmatch(r"([0-9.]+) ?([a-z]*)", value).groups()  # type: ignore[union-attr]
        want = config_default(key)
        assert isinstance(want, int | float), (name, key, want)
        assert float(number) * UNITS[unit] == want, f"{name}: `{key}` documented as {value}, not {want}"


def test_the_status_timeout_the_guide_states_covers_the_forced_commands_worst_case() -> None:
    from breakglass.config import ProbeSettings

    text = prose(GUIDE)
    said = re.search(
        r"the (\d+) s QMP timeout, then `qm list`\) and (\d+) s at most "
        r"\(`qm list` is cut off after (\d+) s\)",
        text,
    )
    assert said, "the guide no longer states how long a status on a wedged QEMU takes"
    qmp, worst, listed = (float(x) for x in said.groups())
    script = load_script("breakglass-verbs")
    assert (qmp, listed) == (script.QMP_TIMEOUT, script.LIST_TIMEOUT)
    assert worst == qmp + listed < ProbeSettings().status_timeout_seconds
    assert f"Keep it above {worst:g} s" in text


def test_the_example_prometheus_scrapes_at_the_probe_interval_and_the_docs_show_it() -> None:
    import yaml

    from breakglass.config import ProbeSettings

    interval = f"{ProbeSettings().interval_seconds:g}s"
    example = (ROOT / "config" / "prometheus" / "prometheus.example.yml").read_text(encoding="utf-8")
    assert yaml.safe_load(example)["global"]["scrape_interval"] == interval
    shown = next(b for b in blocks(ROOT / "docs" / "observability.md") if "prometheus.example.yml" in b.text)
    assert yaml.safe_load(shown.text) == yaml.safe_load(example)
    monitor = yaml.safe_load((ROOT / "deploy" / "k8s" / "servicemonitor.yaml").read_text(encoding="utf-8"))
    assert monitor["spec"]["endpoints"][0]["interval"] == interval
    grafana = yaml.safe_load((ROOT / "dashboards" / "provisioning.yaml").read_text(encoding="utf-8"))
    assert grafana["datasources"][0]["jsonData"]["timeInterval"] == interval


def test_the_time_scale_the_observability_docs_state_is_the_test_profiles() -> None:
    from breakglass.config import ProbeSettings
    from breakglass.sim.statedir import PROFILES

    fast, default = PROFILES["test"]["probe"]["interval_seconds"], ProbeSettings().interval_seconds
    text = prose(ROOT / "docs" / "observability.md")
    pairs = re.findall(r"probes every (\d+) s, not (\d+) s|(\d+) s probes instead of (\d+) s", text)
    assert len(pairs) == 2, pairs
    for pair in pairs:
        assert [float(x) for x in pair if x] == [fast, default]
    scales = re.findall(r"(?:scaled|shrink) by (?:the same )?1/(\d+)", text)
    assert scales
    assert all(float(n) == default / fast for n in scales), scales


def test_the_stale_rounds_alert_states_its_threshold_in_rounds_of_the_default_interval() -> None:
    import yaml

    from breakglass.config import ProbeSettings

    interval = ProbeSettings().interval_seconds
    rules = yaml.safe_load((ROOT / "config" / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    stale = "BreakglassProbeRoundsStale"
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == stale]
    threshold = float(re.search(r">\s*(\d+)\s*$", rule["expr"]).group(1))  # type: ignore[union-attr]
    said = re.compile(r"(\d+) s \((\d+) rounds at the default (\d+) s")
    for where, text in (
        ("alerts.yml", re.sub(r"\s+", " ", rule["annotations"]["description"])),
        ("observability.md", prose(ROOT / "docs" / "observability.md")),
    ):
        m = said.search(text)
        assert m, f"{where}: no 'N s (R rounds at the default I s' for the stale-rounds alert"
        assert [float(x) for x in m.groups()] == [threshold, threshold / interval, interval], where
