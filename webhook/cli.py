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

# Subcommands that live in the development package (``gpu_queue_dev``), not in the product: the
# image does not carry them, so ``gpu-queue`` hands them over when that package is installed and
# says how to get it when it is not.
_DEV_COMMANDS = {
    "dev": "a local control plane with fake GPU nodes (no Docker)",
    "demo": "play the seed story on a local dev cluster",
}
_NO_DEV_PACKAGE = (
    "error: `gpu-queue {command}` is development tooling and is not installed here.\n"
    "From a checkout of the repository: pip install -e '.[dev]'   (or run: make {make_target})"
)


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


MAX_REPORT_DAYS = 366
MAX_WHAT_IF = 256  # slice counts up to this, or up to 4x the first, per --what-if range


def _report_days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of days such as 7 or 0.5, got {text!r}") from None
    if not 0 < days <= MAX_REPORT_DAYS:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_REPORT_DAYS} days, got {text}")
    return days


def _slice_range(text: str) -> range:
    """``A..B`` (inclusive) or ``N``; bounded so a replay per count stays quick."""
    low_text, sep, high_text = text.partition("..")
    try:
        low = int(low_text)
        high = int(high_text) if sep else low
    except ValueError:
        raise argparse.ArgumentTypeError(f"slice counts as A..B such as 8..16, got {text!r}") from None
    if low < 0:
        raise argparse.ArgumentTypeError(f"slice counts must be >= 0, got {text}")
    if low > high:
        raise argparse.ArgumentTypeError(f"the first count must not exceed the last (A..B with A <= B), got {text}")
    if high > MAX_WHAT_IF and high > 4 * low:
        raise argparse.ArgumentTypeError(f"at most {MAX_WHAT_IF} slices or 4x the first count (e.g. 8..32), got {text}")
    return range(low, high + 1)


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

    certs = sub.add_parser(
        "certs", help="make or renew the CA and serving certificate; optionally store them, patch caBundle"
    )
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
    certs.add_argument(
        "--rotate-ca",
        action="store_true",
        help="with --secret: replace the CA in two runs with an overlap (1: stage and trust the next CA; "
        "2: sign with it)",
    )
    certs.add_argument(
        "--drop-old-ca",
        action="store_true",
        help="with --secret: end the overlap now: ca.crt keeps only the CAs the certificates need",
    )
    certs.add_argument("--kubeconfig", default=None, help="for --secret/--patch-webhooks; default in-cluster")
    certs.set_defaults(run=_lazy("webhook.certs_command:run_certs"))

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

    report = sub.add_parser(
        "report", help="waits, use and what other slice counts would have done, from the queue's history in Redis"
    )
    report.add_argument(
        "--config",
        default=os.environ.get("GPU_QUEUE_CONFIG"),
        help="YAML configuration file (env GPU_QUEUE_CONFIG): its redis.url, redis.keyPrefix and pool capacities",
    )
    report.add_argument("--pool", default=None, help="only this pool; default: every pool with history")
    report.add_argument("--days", type=_report_days, default=7.0, help="the period: the last DAYS days (default 7)")
    report.add_argument(
        "--what-if",
        type=_slice_range,
        default=None,
        metavar="A..B",
        help="slice counts to replay the requests against, inclusive; default: the capacity to twice it",
    )
    report.add_argument("--output", "-o", choices=["text", "json"], default="text")
    report.set_defaults(run=_lazy("webhook.report_command:run_report"))

    for name, helptext in _DEV_COMMANDS.items():
        sub.add_parser(name, help=f"{helptext} (development tooling: needs the dev extra)", add_help=False)
    return parser


def _run_dev_command(argv: list[str]) -> int:
    try:
        from gpu_queue_dev.cli import main as dev_main
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("gpu_queue_dev"):
            raise
        target = "demo" if argv[0] == "demo" else "setup"
        print(_NO_DEV_PACKAGE.format(command=argv[0], make_target=target), file=sys.stderr)
        return 2
    return dev_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in _DEV_COMMANDS:
        return _run_dev_command(args_list)
    args = build_parser().parse_args(args_list)
    run: Runner = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
