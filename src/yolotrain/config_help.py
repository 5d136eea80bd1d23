"""What ``yolotrain help`` prints and the documentation's settings reference, both from :data:`config.SETTINGS`.

One description per setting (:func:`describe`) feeds the command line and the Markdown page the docs build
generates (``docs/hooks/settings_reference.py`` calls :func:`reference_markdown`), so neither can drift
from the declarations::

    yolotrain help              # every setting, one line each
    yolotrain help predict      # the settings predict accepts
    yolotrain help mosaic       # one setting in full
"""

from __future__ import annotations

from dataclasses import dataclass

from yolotrain.config import COMMANDS, KEPT, MAY_CHANGE, REFUSED, SETTINGS, TRAIN, Setting

# how each kind is named for a reader (the declaration's ``kind`` is a validation category)
KIND_NAMES = {
    "bool": "bool",
    "int": "int",
    "float": "float",
    "str": "text",
    "list": "list",
    "batch": "int or fraction",
    "any": "see help",
}
ON_RESUME_TEXT = {
    KEPT: "kept: the checkpoint's value (a new one is ignored, with a warning)",
    MAY_CHANGE: "may change: the new value is used",
    REFUSED: "refused: another value stops the resume",
}


@dataclass(frozen=True)
class SettingDoc:
    """One setting as a reader sees it; every field is text."""

    name: str
    type: str
    default: str
    allowed: str
    commands: str
    on_resume: str
    help: str


def _value_text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    if isinstance(value, str) and not value:
        return '""'
    return f"{value:g}" if isinstance(value, float) else str(value)


def _allowed_text(s: Setting) -> str:
    if s.choices is not None:
        text = ", ".join(_value_text(c) for c in s.choices)
        if s.aliases:
            text += " (" + ", ".join(f"{a} = {v}" for a, v in s.aliases) + ")"
    elif s.check is not None and s.check.__doc__:  # the check's docstring says what it lets through
        text = s.check.__doc__.strip()
    elif s.kind in ("int", "float"):
        lo = "-inf" if s.lo is None else _value_text(s.lo if s.kind == "float" else int(s.lo))
        hi = "inf" if s.hi is None else _value_text(s.hi if s.kind == "float" else int(s.hi))
        text = f"{lo} .. {hi}"
    elif s.kind == "bool":
        text = "true, false"
    else:
        text = "any"
    return text + (", null" if s.nullable else "")


def _commands_text(commands: tuple[str, ...]) -> str:
    return ", ".join(c for c in COMMANDS if c in commands)


def describe(name: str) -> SettingDoc:
    """The reader's view of setting ``name`` (raises KeyError for an unknown name)."""
    s = SETTINGS[name]
    trains = any(c in TRAIN for c in s.commands)
    return SettingDoc(
        name=name,
        type=KIND_NAMES.get(s.kind, s.kind),
        default=_value_text(s.default),
        allowed=_allowed_text(s),
        commands=_commands_text(s.commands),
        # resume concerns only what training reads; a val/predict/export setting has no say in it
        on_resume=s.on_resume if trains else "-",
        help=s.help,
    )


def help_text(command: str | None = None) -> str:
    """Every setting (or those ``command`` accepts) with its default and help, one line each."""
    names = [k for k, s in SETTINGS.items() if command is None or command in s.commands]
    width = max(map(len, names))
    docs = [describe(k) for k in names]
    lines = [f"  {d.name:<{width}}  {d.default:<12} {d.help}" for d in docs]
    head = f"settings {command} accepts (key=value):" if command else "settings (key=value):"
    tail = "\n\n'yolotrain help COMMAND' lists one command's settings; 'yolotrain help KEY' shows one in full"
    return head + "\n" + "\n".join(lines) + tail


def setting_text(name: str) -> str:
    """One setting in full, for ``yolotrain help KEY``."""
    d = describe(name)
    resume = ON_RESUME_TEXT.get(d.on_resume, "-")
    return (
        f"{d.name}: {d.help}\n"
        f"  type       {d.type}\n"
        f"  default    {d.default}\n"
        f"  allowed    {d.allowed}\n"
        f"  commands   {d.commands}\n"
        f"  on resume  {resume}"
    )


def _cell(text: str) -> str:
    """Markdown table cell: pipes escaped, code-like values in backticks."""
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The settings reference page of the documentation, as Markdown."""
    out = [
        "# Settings reference",
        "",
        "Generated from `yolotrain.config.SETTINGS` when the documentation is built; `yolotrain help` prints the "
        "same declarations (`yolotrain help KEY` for one setting, `yolotrain help COMMAND` for one command's).",
        "",
        "Every setting is given as `key=value` (or `--key value`) on the command line, as a keyword of the "
        "Python API, or in a `cfg=file.yaml`. A setting given to a command that does not read it is refused "
        "with one line naming the commands that accept it.",
        "",
        "**On resume** says what `yolotrain train resume=... key=value` does with a new value: "
        + "; ".join(f"*{text.split(':')[0]}*:{text.split(':', 1)[1]}" for text in ON_RESUME_TEXT.values())
        + ". `epochs` may only be raised (to extend a run).",
        "",
        "| setting | type | default | allowed | commands | on resume | what it does |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SETTINGS:
        d = describe(name)
        out.append(
            f"| `{d.name}` | {d.type} | `{_cell(d.default)}` | {_cell(d.allowed)} | {d.commands} | {d.on_resume} "
            f"| {_cell(d.help)} |"
        )
    return "\n".join(out) + "\n"


__all__ = ["SettingDoc", "describe", "help_text", "reference_markdown", "setting_text"]
