"""``gpu-queue-dev`` (also reached as ``gpu-queue dev ...`` and ``gpu-queue demo``): the
development tooling's command line, kept out of the product's so the image never carries it."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

Runner = Callable[[argparse.Namespace], int]

_DEFAULT_STATE_DIR = os.path.expanduser("~/.local/state/gpu-queue/dev")


def _lazy(target: str) -> Runner:
    """``module:function`` resolved at call time, so ``--help`` imports nothing heavy."""
    module_name, func_name = target.split(":")

    def run(args: argparse.Namespace) -> int:
        func: Runner = getattr(importlib.import_module(module_name), func_name)
        return func(args)

    return run


def _state_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        default=os.environ.get("GPU_QUEUE_DEV_DIR", _DEFAULT_STATE_DIR),
        help="where kubeconfig, tokens, certs and logs go (env GPU_QUEUE_DEV_DIR)",
    )


def build_parser(prog: str = "gpu-queue") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="gpu-queue's development tooling.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="a local control plane with fake GPU nodes (no Docker)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="ACTION")
    for action, helptext in (
        ("up", "start etcd, kube-apiserver, kube-scheduler, kwok, redis and the service"),
        ("down", "stop every process `dev up` started"),
        ("status", "show the dev cluster's processes and addresses"),
    ):
        p = dev_sub.add_parser(action, help=helptext)
        _state_dir_arg(p)
        if action == "up":
            p.add_argument("--slices", type=int, default=8, help="nvidia.com/gpu on the fake GPU node")
            p.add_argument("--replicas", type=int, default=1, help="service replicas")
            p.add_argument("--config", default=None, help="service config file (default: the seed)")
        p.set_defaults(run=_lazy(f"gpu_queue_dev.commands:run_{action}"))

    demo = sub.add_parser("demo", help="play the seed story on a local dev cluster")
    demo.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    demo.add_argument("--slices", type=int, default=8)
    demo.add_argument(
        "--pace",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="pause between story steps so a person can follow (0: no pauses)",
    )
    _state_dir_arg(demo)
    demo.set_defaults(run=_lazy("gpu_queue_dev.demo:run_demo"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Runner = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


def console_main() -> int:
    """The ``gpu-queue-dev`` entry point."""
    return main(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
