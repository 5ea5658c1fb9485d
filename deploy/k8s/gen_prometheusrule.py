"""Generate deploy/k8s/prometheusrule.yaml from config/prometheus/alerts.yml.

The Prometheus Operator reads alert rules from a PrometheusRule object; plain
Prometheus reads alerts.yml. One source of truth: this script wraps the file's
groups, unchanged, into the object. Run it after editing alerts.yml:

    python deploy/k8s/gen_prometheusrule.py          # rewrite the manifest
    python deploy/k8s/gen_prometheusrule.py --check  # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
OUTPUT = Path(__file__).resolve().parent / "prometheusrule.yaml"
HEADER = """\
# GENERATED from config/prometheus/alerts.yml by deploy/k8s/gen_prometheusrule.py.
# Do not edit: change alerts.yml and run the script. A test fails when they differ.
# Many Prometheus Operator installs select rules by a label (kube-prometheus-stack:
# release=<helm release name>); add it in a kustomize overlay if yours does.
"""


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (long PromQL, descriptions) as readable blocks."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(alerts: dict[str, Any]) -> dict[str, Any]:
    """Wrap an alerts.yml document's groups into a PrometheusRule object."""
    groups = alerts.get("groups") if isinstance(alerts, dict) else None
    if not isinstance(groups, list) or not groups:
        raise ValueError("alerts.yml: expected a non-empty 'groups' list")
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "breakglass",
            "labels": {
                "app.kubernetes.io/name": "breakglass",
                "app.kubernetes.io/component": "alerts",
            },
        },
        "spec": {"groups": groups},
    }


def render(alerts_text: str) -> str:
    """The manifest text for an alerts.yml text."""
    rule = prometheus_rule(yaml.safe_load(alerts_text))
    body = yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    """Write the manifest, or with --check report whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the manifest is stale")
    args = parser.parse_args(argv)
    wanted = render(ALERTS.read_text(encoding="utf-8"))
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
    if args.check:
        if current != wanted:
            print(f"{OUTPUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        OUTPUT.write_text(wanted, encoding="utf-8")
        print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
