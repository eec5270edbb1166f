"""The ``experimat`` command for batch runs on a project folder.

::

    experimat info PROJECT
    experimat run PROJECT METHOD --modality spatial-bin --samples a,b --param key=value ... [--n-jobs 2] [--scheduler ADDRESS]
    experimat history PROJECT
    experimat demo [--out DIR]
    experimat version

Exit code 0 on success; on failure the error message (no traceback unless ``--debug``) and 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=[1,2]", "c=text"]`` -> ``{"a": 1, "b": [1, 2], "c": "text"}`` (values as JSON when possible)."""
    out = {}
    for item in items:
        if "=" not in item:
            from ._errors import InvalidInputError

            raise InvalidInputError(f"--param {item!r} must look like key=value.")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v)
    return out


def _cmd_info(args: argparse.Namespace) -> int:
    import experimat as em

    expm = em.load_experiment(args.project, mode="r", verify=not args.no_verify)
    print(expm)
    for mod in expm.modalities:
        print(f"  methods for {mod}: {', '.join(expm.modality(mod).methods)}")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    import pandas as pd

    import experimat as em

    expm = em.load_experiment(args.project, mode="r", verify=False)
    df = expm.history()
    if df.empty:
        print("no history yet")
        return 0
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_colwidth", 60):
        print(df[["start", "method", "modality", "sample", "outcome", "duration_s", "executor", "error"]].to_string(index=False))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import experimat as em

    params = parse_params(args.param or [])
    samples: Any = True if args.samples in (None, "all") else [s for s in args.samples.split(",") if s]
    executor = None
    if args.scheduler:
        from ._optional import import_optional

        distributed = import_optional("distributed", purpose="--scheduler")
        executor = distributed.Client(args.scheduler)
    with em.load_experiment(args.project, mode="r+", force=args.force) as expm:
        acc = expm.modality(args.modality)
        try:
            method = getattr(acc, args.method)
        except AttributeError as e:
            raise em.InvalidInputError(str(e)) from None
        result = method(run_on_samples=samples, n_jobs=args.n_jobs, executor=executor, resume=args.resume, **params)
        expm.save()
    if executor is not None:
        executor.close()
    done = list(result) if isinstance(result, dict) else []
    print(f"{args.method}: finished on {len(done)} samples: {', '.join(done)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, overwrite=args.overwrite)
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    from ._version_info import version

    version()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="experimat", description="Multi-sample spatial / single-cell experiments.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="summarise a project")
    s.add_argument("project")
    s.add_argument("--no-verify", action="store_true", help="skip checksum verification")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("run", help="run a method on samples of a project and save")
    s.add_argument("project")
    s.add_argument("method")
    s.add_argument("--modality", default="spatial-bin")
    s.add_argument("--samples", default=None, help="comma-separated sample names (default: all)")
    s.add_argument("--param", action="append", metavar="KEY=VALUE", help="method option (value parsed as JSON when possible)")
    s.add_argument("--n-jobs", type=int, default=None)
    s.add_argument("--scheduler", default=None, help="address of a Dask scheduler (tcp://host:port)")
    s.add_argument("--resume", action="store_true", help="skip samples already finished with the same parameters")
    s.add_argument("--force", action="store_true", help="break a stale writer lock")
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("history", help="print the method-call history")
    s.add_argument("project")
    s.set_defaults(func=_cmd_history)

    s = sub.add_parser("demo", help="build and analyse a project from the shipped mouse-muscle Visium samples")
    s.add_argument("--out", default="experimat-demo")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("version", help="print versions, devices and folders")
    s.set_defaults(func=_cmd_version)
    return p


def main(argv: list[str] | None = None) -> int:
    from ._errors import ExperimatError
    from ._settings import settings

    args = build_parser().parse_args(argv)
    if args.quiet:
        settings.verbosity = "warning"
    try:
        return args.func(args)
    except (ExperimatError, OSError, ValueError, KeyError) as e:
        if args.debug:
            raise
        print(f"experimat: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
