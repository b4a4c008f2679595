"""The ``gpu-queue`` command line: every subcommand's arguments in one place (the contract the
chart, the docs and the tests share); each implementation lives in the module that owns the job and
is imported only when its subcommand runs, so ``gpu-queue status`` never loads the server."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

Runner = Callable[[argparse.Namespace], int]


def _lazy(target: str) -> Runner:
    """``module:function`` resolved at call time."""
    module_name, func_name = target.split(":")

    def run(args: argparse.Namespace) -> int:
        func: Runner = getattr(importlib.import_module(module_name), func_name)
        return func(args)

    return run


def _api_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api",
        default=os.environ.get("GPU_QUEUE_API_URL", "https://localhost:8443"),
        help="base URL of the service (env GPU_QUEUE_API_URL)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("GPU_QUEUE_TOKEN", ""),
        help="API bearer token (env GPU_QUEUE_TOKEN); admin token for edits",
    )
    p.add_argument(
        "--ca",
        default=os.environ.get("GPU_QUEUE_CA", ""),
        help="CA bundle to verify the service (env GPU_QUEUE_CA); default: system CAs",
    )
    p.add_argument("--insecure", action="store_true", help="do not verify the service certificate")
    p.add_argument("--output", "-o", choices=["table", "json"], default="table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-queue",
        description="Queue-aware admission webhook for JupyterHub single-user pods.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the webhook, queue controller and API")
    serve.add_argument(
        "--config",
        default=os.environ.get("GPU_QUEUE_CONFIG"),
        help="YAML configuration file (env GPU_QUEUE_CONFIG); default: the built-in seed config",
    )
    serve.set_defaults(run=_lazy("webhook.server:run_serve"))

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a config file and print the effective config")
    check.add_argument("file", nargs="?", default=os.environ.get("GPU_QUEUE_CONFIG"))
    check.set_defaults(run=_lazy("webhook.config:run_check"))

    certs = sub.add_parser("certs", help="make a CA and a serving certificate; optionally store and patch caBundle")
    certs.add_argument("--out", default="", help="directory for ca.crt, ca.key, tls.crt, tls.key")
    certs.add_argument("--service", default="gpu-queue", help="Service name (DNS SANs)")
    certs.add_argument("--namespace", default="gpu-queue", help="Service namespace (DNS SANs)")
    certs.add_argument("--dns", action="append", default=[], help="extra DNS SAN (repeatable)")
    certs.add_argument("--ip", action="append", default=[], help="IP SAN (repeatable), e.g. 127.0.0.1")
    certs.add_argument("--days", type=int, default=365, help="serving certificate lifetime")
    certs.add_argument(
        "--secret", default="", help="store the pair in this TLS Secret (NAMESPACE/NAME) instead of files"
    )
    certs.add_argument(
        "--renew-before-days",
        type=int,
        default=30,
        help="with --secret: keep an existing certificate unless it expires within this many days",
    )
    certs.add_argument(
        "--patch-webhooks",
        action="append",
        default=[],
        metavar="NAME",
        help="set the caBundle of this Mutating/ValidatingWebhookConfiguration (repeatable)",
    )
    certs.add_argument("--kubeconfig", default=None, help="for --secret/--patch-webhooks; default in-cluster")
    certs.set_defaults(run=_lazy("webhook.certs:run_certs"))

    status = sub.add_parser("status", help="holders and queue of every pool, as a table")
    _api_client_args(status)
    status.add_argument("--pool", default=None, help="only this pool")
    status.set_defaults(run=_lazy("webhook.admin:run_status"))

    queue = sub.add_parser("queue", help="list and edit a pool's queue (admin token)")
    queue_sub = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    q_ls = queue_sub.add_parser("ls", help="list the queue of a pool")
    _api_client_args(q_ls)
    q_ls.add_argument("pool", nargs="?", default=None)
    q_ls.set_defaults(run=_lazy("webhook.admin:run_queue_ls"))
    q_rm = queue_sub.add_parser("rm", help="remove a pod from its queue (its pod is deleted)")
    _api_client_args(q_rm)
    q_rm.add_argument("pod", help="NAMESPACE/NAME")
    q_rm.add_argument("--reason", default="", help="logged with the edit")
    q_rm.set_defaults(run=_lazy("webhook.admin:run_queue_rm"))
    q_mv = queue_sub.add_parser("move", help="move a queued pod to a 1-based position")
    _api_client_args(q_mv)
    q_mv.add_argument("pod", help="NAMESPACE/NAME")
    q_mv.add_argument("position", type=int)
    q_mv.add_argument("--reason", default="", help="logged with the edit")
    q_mv.set_defaults(run=_lazy("webhook.admin:run_queue_move"))

    dev = sub.add_parser("dev", help="a local control plane with fake GPU nodes (no Docker)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="ACTION")
    for action, helptext in (
        ("up", "start etcd, kube-apiserver, kube-scheduler, kwok, redis and the service"),
        ("down", "stop every process `dev up` started"),
        ("status", "show the dev cluster's processes and addresses"),
    ):
        p = dev_sub.add_parser(action, help=helptext)
        p.add_argument(
            "--state-dir",
            default=os.environ.get("GPU_QUEUE_DEV_DIR", os.path.expanduser("~/.local/state/gpu-queue/dev")),
            help="where kubeconfig, tokens, certs and logs go (env GPU_QUEUE_DEV_DIR)",
        )
        if action == "up":
            p.add_argument("--slices", type=int, default=8, help="nvidia.com/gpu on the fake GPU node")
            p.add_argument("--replicas", type=int, default=1, help="service replicas")
            p.add_argument("--config", default=None, help="service config file (default: the seed)")
        p.set_defaults(run=_lazy(f"webhook.dev:run_{action}"))

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
    demo.add_argument(
        "--state-dir",
        default=os.environ.get("GPU_QUEUE_DEV_DIR", os.path.expanduser("~/.local/state/gpu-queue/dev")),
    )
    demo.set_defaults(run=_lazy("webhook.demo:run_demo"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Runner = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
