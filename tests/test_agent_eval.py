"""bench/agent_eval.py scores the model only: a runbook rescue is never a model success."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "tests" / "scenarios"


@pytest.fixture(scope="module")
def agent_eval() -> ModuleType:
    """The benchmark script, imported as a module."""
    spec = importlib.util.spec_from_file_location("agent_eval", ROOT / "bench" / "agent_eval.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["agent_eval"] = module
    spec.loader.exec_module(module)
    return module


def test_an_endpoint_answering_404_scores_zero_even_when_the_runbook_recovers(
    agent_eval: ModuleType, tmp_path: Path
) -> None:
    row = agent_eval.run_one("vm_stopped", agent_eval.Model("m", SCENARIOS / "not_found.json"), tmp_path, 60)
    assert row["recovered"]  # the runbook started the VM...
    assert row["fallback"]
    assert not row["model_ok"]  # ...which is not the model's success
    assert row["turns"] == 0


def test_a_scripted_model_that_starts_a_stopped_vm_scores_with_every_column(
    agent_eval: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = agent_eval.run_one(
        "vm_stopped", agent_eval.Model("m", SCENARIOS / "eval_vm_stopped.json"), tmp_path, 60
    )
    assert row["model_ok"], row
    assert row["verbs"] == ["start"]
    assert row["least_force"]
    assert row["forensics_first"] == "no"
    assert row["turns"] == 4
    assert row["cache_read"] > 0
    assert row["report_ok"]
    agent_eval.print_table([{**row, "run": 1}], "t")
    assert "model successes: 1/1 runs; the runbook took over in 0" in capsys.readouterr().out


def test_the_report_check_needs_the_state_line_to_match_the_simulator(agent_eval: ModuleType) -> None:
    assert agent_eval.report_agrees("Found: x\nDid: y\nState now: VM running.", healthy=True)
    assert not agent_eval.report_agrees("Found: x\nDid: y\nState now: VM running.", healthy=False)
    assert not agent_eval.report_agrees("Found: x\nDid: y\nState now: still stalled.", healthy=True)
    assert not agent_eval.report_agrees("no three-line report", healthy=True)
