"""Config validation: every broken config names the key and exits 2."""

from __future__ import annotations

import copy
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from breakglass.config import DEFAULT_MODEL, ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "breakglass.example.yaml"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name in ("devvm_key", "pve_key", "known_hosts"):
        (tmp_path / name).write_text("x\n")
    return tmp_path


def good(files: Path) -> dict[str, Any]:
    ep = {"key_file": str(files / "devvm_key"), "known_hosts": str(files / "known_hosts")}
    return {
        "store_path": str(files / "b.db"),
        "targets": [
            {
                "name": "devvm",
                "vmid": 102,
                "devvm": {"host": "10.0.10.10", "user": "breakglass", **ep},
                "pve": {
                    "host": "192.168.1.127",
                    "user": "root",
                    "key_file": str(files / "pve_key"),
                    "known_hosts": str(files / "known_hosts"),
                },
            }
        ],
    }


def write(files: Path, data: Any) -> Path:
    p = files / "config.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "breakglass.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_minimal_config_is_valid_with_documented_defaults(files: Path) -> None:
    cfg = load_config(write(files, good(files)))
    assert cfg.targets[0].devvm.port == 22
    assert cfg.agent.model == DEFAULT_MODEL == "claude-sonnet-5-5"
    assert cfg.budget.max_actions == 3
    assert cfg.budget.window_seconds == 6 * 3600
    assert cfg.budget.min_gap_seconds == 600
    assert cfg.incidents.cooldown_seconds == 600
    assert cfg.web.bind == "127.0.0.1"


def test_the_example_config_documents_every_default(files: Path) -> None:
    """The example's values equal the model's defaults, so the comments tell the truth."""
    example = yaml.safe_load(EXAMPLE.read_text())
    cfg = load_config(write(files, good(files)))
    for section in ("probe", "rules", "budget", "incidents", "agent", "web", "notify", "log"):
        model_dump = getattr(cfg, section).model_dump(mode="json")
        for key, value in example[section].items():
            if key == "auth":
                continue
            got = model_dump[key]
            want = list(value) if isinstance(value, list) else value
            got = list(got) if isinstance(got, (list, tuple)) else got
            assert got == want, f"example {section}.{key}={value!r} but default is {got!r}"
        assert set(example[section]) == set(model_dump), f"{section}: example and model keys differ"


def test_relative_paths_are_relative_to_the_config_file(files: Path) -> None:
    data = good(files)
    data["targets"][0]["devvm"]["key_file"] = "devvm_key"
    data["store_path"] = "state/b.db"
    cfg = load_config(write(files, data))
    assert cfg.targets[0].devvm.key_file == files / "devvm_key"
    assert cfg.store_path == files / "state" / "b.db"


def test_check_config_exits_0_for_a_valid_file(files: Path) -> None:
    out = run_check(write(files, good(files)))
    assert out.returncode == 0, out.stderr
    assert "devvm" in out.stdout


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node: Any = data
    parts = path.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        key: Any = int(part) if part.isdigit() else part
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    last = parts[-1]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return data


_DELETE = object()

BROKEN = [
    ("targets[0].pve.port", 70000, "less than or equal to 65535"),
    ("targets[0].devvm.port", "ssh", "valid integer"),
    ("targets[0].vmid", 5, "greater than or equal to 100"),
    ("targets[0].name", "bad name!", "should match pattern"),
    ("targets[0].devvm.user", _DELETE, "Field required"),
    ("targets[0].pve.hostt", "x", "Extra inputs are not permitted"),
    ("probe.interval_seconds", 0, "greater than 0"),
    ("probe.round_timeout_seconds", 1, "round_timeout_seconds must be >= connect_timeout_seconds"),
    ("probe.status_timeout_seconds", 0, "greater than 0"),
    ("probe.status_timeout_seconds", "slow", "valid number"),
    ("probe.status_timeout_seconds", 12, "round_timeout_seconds must be >= status_timeout_seconds"),
    ("rules.mem_available_ratio", 3, "less than 1"),
    ("budget.max_actions", -1, "greater than or equal to 0"),
    ("budget.dry_run", "perhaps", "valid boolean"),
    ("agent.api_key", "sk-ant-secret", "Extra inputs are not permitted"),
    ("agent.enabled", "sometimes", "'auto', 'always' or 'never'"),
    ("web.auth.mode", "proxy", "needs proxy_users"),
    ("web.port", -1, "greater than or equal to 0"),
    ("log.level", "loud", "'debug', 'info', 'warning' or 'error'"),
    ("unknown_section", {}, "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("key", "value", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_config_exits_2_naming_the_file_and_key(
    files: Path, key: str, value: Any, message: str
) -> None:
    path = write(files, _set(good(files), key, value))
    out = run_check(path)
    assert out.returncode == 2
    shown = key.split(".")[0] if key == "unknown_section" else key
    if message.startswith("round_timeout_seconds must") or key == "web.auth.mode":
        shown = key.rsplit(".", 1)[0]  # a check across keys names their section
    assert f"{path}: {shown}" in out.stderr, out.stderr
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_an_api_key_in_the_yaml_is_rejected_and_never_echoed(files: Path) -> None:
    out = run_check(write(files, _set(good(files), "agent.api_key", "sk-ant-secret-123")))
    assert out.returncode == 2
    assert "agent.api_key" in out.stderr
    assert "sk-ant-secret-123" not in out.stderr + out.stdout


def test_a_missing_key_file_is_named(files: Path) -> None:
    (files / "pve_key").unlink()
    path = write(files, good(files))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"targets[0].pve.key_file: file {files / 'pve_key'} does not exist" in str(err.value)


def test_a_directory_as_known_hosts_is_named(files: Path) -> None:
    (files / "kh").mkdir()
    data = _set(good(files), "targets[0].devvm.known_hosts", str(files / "kh"))
    with pytest.raises(ConfigError, match=r"targets\[0\]\.devvm\.known_hosts: .* is not a file"):
        load_config(write(files, data))


def test_duplicate_target_names_are_rejected(files: Path) -> None:
    data = good(files)
    data["targets"].append(copy.deepcopy(data["targets"][0]))
    with pytest.raises(ConfigError, match="targets: Value error, duplicate target name 'devvm'"):
        load_config(write(files, data))


def test_no_targets_is_rejected(files: Path) -> None:
    with pytest.raises(ConfigError, match="targets: Tuple should have at least 1 item"):
        load_config(write(files, _set(good(files), "targets", [])))


def test_invalid_yaml_names_the_line(files: Path) -> None:
    pattern = r"config.yaml: line \d+, column \d+: invalid YAML: expected ',' or ']'"
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(files, "targets:\n  - name: [unclosed\n"))


def test_a_yaml_list_at_top_level_is_rejected(files: Path) -> None:
    with pytest.raises(ConfigError, match=r"\(top level\): expected a mapping, got list"):
        load_config(write(files, "- a\n- b\n"))


def test_a_missing_config_file_exits_2(files: Path) -> None:
    out = run_check(files / "nope.yaml")
    assert out.returncode == 2
    assert "nope.yaml: config file does not exist" in out.stderr


def test_the_api_key_comes_from_a_key_file_before_the_environment(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = files / "api_key"
    key.write_text("sk-from-file\n")
    key.chmod(stat.S_IRUSR)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-from-env")
    cfg = load_config(write(files, good(files)))
    assert cfg.agent.api_key() == "sk-from-env"
    cfg = load_config(write(files, _set(good(files), "agent.api_key_file", str(key))))
    assert cfg.agent.api_key() == "sk-from-file"
