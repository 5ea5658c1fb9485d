"""The one entry point: ``breakglass serve|demo|sim|probe|trigger|check-config|doctor``.

Exit codes: 0 ok, 1 failure, 2 bad usage or bad config. Each subcommand's
work lives in the module it belongs to; this file only parses arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from breakglass.config import Config, ConfigError, load_config

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"breakglass: invalid config\n{exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _cmd_check_config(args: argparse.Namespace) -> int:
    from breakglass.preflight import startup_problems

    cfg = _load(args.file)
    # The same checks serve runs before it listens: passing here means serve starts.
    problems = startup_problems(cfg)
    if problems:
        print(f"breakglass: {args.file}: serve would refuse to start", file=sys.stderr)
        for problem in problems:
            print(f"breakglass: {problem}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.file}: ok ({len(cfg.targets)} target(s): {', '.join(t.name for t in cfg.targets)})")
    return EXIT_OK


def _cmd_probe(args: argparse.Namespace) -> int:
    from breakglass.watchdog.probes import probe_command

    return probe_command(_load(args.config), as_json=args.json)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from breakglass.doctor import doctor_command

    return doctor_command(_load(args.config))


def _cmd_serve(args: argparse.Namespace) -> int:
    from breakglass.service import serve

    return serve(_load(args.config))


def _cmd_demo(args: argparse.Namespace) -> int:
    from breakglass.service import demo

    return demo(state_dir=args.state_dir, port=args.port)


def _cmd_trigger(args: argparse.Namespace) -> int:
    from breakglass.web.client import trigger_command

    return trigger_command(
        _load(args.config), target=args.target, reason=args.reason, authorize_power=args.authorize_power
    )


def _cmd_sim(args: argparse.Namespace) -> int:
    from breakglass.sim import cli as sim_cli

    if args.sim_action == "inject":
        return sim_cli.inject(args.control, args.fault)
    if args.sim_action == "clear":
        return sim_cli.clear(args.control)
    return sim_cli.run(state_dir=args.state_dir, profile=args.profile)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every subcommand."""
    p = argparse.ArgumentParser(prog="breakglass", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("check-config", help="validate a config file and the checks serve runs at start")
    s.add_argument("file")
    s.set_defaults(func=_cmd_check_config)

    s = sub.add_parser("doctor", help="check every prerequisite on the real hosts, with the fix")
    s.add_argument("-c", "--config", required=True)
    s.set_defaults(func=_cmd_doctor)

    s = sub.add_parser("probe", help="run one probe round per target and print it")
    s.add_argument("-c", "--config", required=True)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=_cmd_probe)

    s = sub.add_parser("serve", help="run the watchdog, agent and web page")
    s.add_argument("-c", "--config", required=True)
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("demo", help="simulator + watchdog + page on 127.0.0.1, no config needed")
    s.add_argument("--state-dir", default=None, help="where to keep keys, config and store")
    s.add_argument("--port", type=int, default=8787)
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("trigger", help="open (or attach to) an incident through the API")
    s.add_argument("-c", "--config", required=True)
    s.add_argument("--target", default=None, help="target name (default: the only one)")
    s.add_argument("--reason", required=True)
    s.add_argument(
        "--authorize-power",
        action="store_true",
        help="allow a power verb although the VM still answers SSH (recorded as you)",
    )
    s.set_defaults(func=_cmd_trigger)

    s = sub.add_parser("sim", help="run the devvm + Proxmox simulator, or drive a running one")
    s.add_argument("--state-dir", default=None, help="folder for keys and config.yaml")
    s.add_argument("--profile", choices=("test", "demo"), default="demo")
    s.set_defaults(func=_cmd_sim, sim_action="run")
    simsub = s.add_subparsers(dest="sim_action")
    i = simsub.add_parser("inject", help="inject a fault into a running simulator")
    i.add_argument("fault")
    i.add_argument("--control", required=True, help="the simulator's control URL")
    c = simsub.add_parser("clear", help="clear every fault of a running simulator")
    c.add_argument("--control", required=True, help="the simulator's control URL")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
