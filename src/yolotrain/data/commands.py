"""The ``yolotrain data`` command: ``check`` and ``convert``.

Examples::

    yolotrain data check data=path/data.yaml            # exit 1 when a split is unusable
    yolotrain data check data=path/data.yaml json=true  # + a JSON summary as the last line
    yolotrain data convert src=path/data.yaml to=yolo out=converted/       # images copied
    yolotrain data convert src=path/data.yaml to=coco out=converted/ link=true  # images symlinked
"""

from __future__ import annotations

import json
import sys

from yolotrain.config import BOOL_FALSE, BOOL_TRUE, parse_cli_args
from yolotrain.data.check import check_dataset, check_summary, format_check
from yolotrain.data.convert import TARGETS, convert_dataset
from yolotrain.errors import ConfigError, DataError

USAGE = (
    "usage: yolotrain data check data=DATA.yaml [json=true] [cache=true]\n"
    "       yolotrain data convert src=DATA.yaml to=yolo|coco out=DIR [link=false]"
)
_KEYS = {"check": ("data", "json", "cache"), "convert": ("src", "data", "to", "out", "link")}


def _bool(args: dict[str, str], key: str, default: bool) -> bool:
    v = str(args.get(key, default)).strip().lower()
    if v in BOOL_TRUE:
        return True
    if v in BOOL_FALSE:
        return False
    raise ConfigError(f"setting '{key}'={args[key]!r} has the wrong type (true or false)")


def _args(sub: str, argv: list[str]) -> dict[str, str]:
    args = parse_cli_args(argv)
    for k in args:
        if k not in _KEYS[sub]:
            raise ConfigError(f"unknown setting '{k}' for 'data {sub}' (allowed: {', '.join(_KEYS[sub])})")
    return args


def cmd_check(argv: list[str]) -> int:
    """``data check``: print the report; 0 when every split is usable, 1 otherwise."""

    args = _args("check", argv)
    if not args.get("data"):
        raise ConfigError("setting 'data' is required: yolotrain data check data=path/data.yaml")
    as_json = _bool(args, "json", False)
    try:
        data, checks = check_dataset(args["data"], use_cache=_bool(args, "cache", True))
    except DataError as e:
        # The data YAML itself is unusable: that is a finding of the check, not a usage error.
        print(f"result: FAILED ({e})")
        if as_json:
            print(json.dumps({"yaml_file": args["data"], "ok": False, "error": str(e)}))
        return 1
    print(format_check(data, checks))
    if as_json:
        print(json.dumps(check_summary(data, checks)))
    return 0 if all(c.usable for c in checks) else 1


def cmd_convert(argv: list[str]) -> int:
    """``data convert``: write the converted dataset and print where its data.yaml is."""

    args = _args("convert", argv)
    src = args.get("src") or args.get("data")
    missing = [k for k, v in (("src", src), ("to", args.get("to")), ("out", args.get("out"))) if not v]
    if missing:
        raise ConfigError(f"setting '{missing[0]}' is required: yolotrain data convert src=DATA.yaml "
                          f"to={'|'.join(TARGETS)} out=DIR")  # fmt: skip
    if args["to"].lower() not in TARGETS:
        raise ConfigError(f"setting 'to'={args['to']!r} is not allowed (one of {', '.join(TARGETS)})")
    yaml_out = convert_dataset(src, args["to"], args["out"], link=_bool(args, "link", False))
    print(f"converted dataset: {yaml_out}")
    return 0


def run_data_command(argv: list[str]) -> int:
    """Dispatch ``yolotrain data <sub> ...``; errors propagate to the CLI's handler (exit 2)."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    sub, rest = argv[0], argv[1:]
    if sub not in _KEYS:
        print(f"error: unknown data command '{sub}'; use check or convert\n{USAGE}", file=sys.stderr)
        return 2
    return cmd_check(rest) if sub == "check" else cmd_convert(rest)
