"""Reading one Pascal VOC annotation XML, refusing the constructs hostile XML relies on.

``defusedxml`` is not a dependency, so the parser is assembled here from the standard library:
expat feeds an ``xml.etree.ElementTree.TreeBuilder``, and any DOCTYPE or ENTITY declaration aborts
the parse. Without a DOCTYPE there is nowhere to declare entities, which rules out "billion laughs"
expansion and external entities (file or network reads). Files are also capped in size.
"""

from __future__ import annotations

import functools
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.parsers import expat

import numpy as np

MAX_XML_BYTES = 4 * 1024 * 1024  # a VOC file is ~1 KB; anything this big is not an annotation


class _Forbidden(Exception):
    """Raised from expat callbacks to abort on a DOCTYPE or ENTITY declaration."""


def safe_parse_xml(data: bytes) -> ET.Element:
    """Parse XML bytes into an Element, refusing DOCTYPE and ENTITY declarations.

    Args:
        data: The document.

    Returns:
        The root element.

    Raises:
        ValueError: Malformed XML, or a forbidden declaration (the message says which).
    """
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()

    def forbid(*_args: object) -> None:
        raise _Forbidden

    parser.StartDoctypeDeclHandler = forbid
    parser.EntityDeclHandler = forbid
    parser.UnparsedEntityDeclHandler = forbid
    parser.ExternalEntityRefHandler = forbid
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
        return builder.close()
    except _Forbidden:
        raise ValueError("DOCTYPE/ENTITY declarations are not allowed") from None
    except expat.ExpatError as e:
        raise ValueError(f"malformed XML ({expat.ErrorString(e.code)} at line {e.lineno})") from None
    except AssertionError:  # TreeBuilder.close on an empty document
        raise ValueError("malformed XML (no root element)") from None


@dataclass
class VocAnnotation:
    """The detection content of one VOC XML file.

    Attributes:
        width: ``size/width`` (0 when absent or invalid).
        height: ``size/height`` (0 when absent or invalid).
        names: Object class names, one per well-formed object.
        boxes: float64 (n, 4) raw ``xmin, ymin, xmax, ymax`` (1-based pixel indices).
        difficult: bool (n,) ``difficult`` flags (absent means 0).
        malformed: One message per object left out for a missing or non-numeric field.
    """

    width: int = 0
    height: int = 0
    names: list[str] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    malformed: list[str] = field(default_factory=list)


def _text(el: ET.Element | None, path: str) -> str | None:
    if el is None:
        return None
    t = el.findtext(path)
    return t.strip() if t is not None else None


def _size(root: ET.Element, key: str) -> int:
    try:
        v = float(_text(root, f"size/{key}") or "")
    except ValueError:
        return 0
    return int(v) if np.isfinite(v) and v >= 1 and v.is_integer() else 0


def _parse(xml_file: str) -> VocAnnotation | str:
    try:
        size = os.path.getsize(xml_file)
        if size > MAX_XML_BYTES:
            return f"{xml_file}: malformed VOC XML, {size} bytes is too large for an annotation"
        with open(xml_file, "rb") as f:
            root = safe_parse_xml(f.read())
    except OSError as e:
        return f"{xml_file}: unreadable VOC XML ({type(e).__name__})"
    except ValueError as e:
        return f"{xml_file}: {e}"
    if root.tag != "annotation":
        return f"{xml_file}: malformed VOC XML, root element is <{root.tag}> instead of <annotation>"
    out = VocAnnotation(width=_size(root, "width"), height=_size(root, "height"))
    boxes: list[list[float]] = []
    difficult: list[bool] = []
    for k, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        try:
            box = [float(_text(obj, f"bndbox/{c}") or "") for c in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            box = None
        if not name or box is None:
            out.malformed.append(
                f"{xml_file}: object {k + 1} needs a <name> and numeric <bndbox> xmin/ymin/xmax/ymax, dropped"
            )
            continue
        out.names.append(name)
        boxes.append(box)
        # Only "1" means difficult; absent or anything else (some tools write "Unspecified") is 0.
        difficult.append(_text(obj, "difficult") in ("1", "1.0", "true", "True"))
    if boxes:
        out.boxes = np.asarray(boxes, dtype=np.float64)
        out.difficult = np.asarray(difficult, dtype=bool)
    return out


@functools.lru_cache(maxsize=65536)
def _parse_cached(xml_file: str, size: int, mtime_ns: int) -> VocAnnotation | str:
    return _parse(xml_file)


def parse_voc_xml(xml_file: str) -> VocAnnotation | str | None:
    """Parse one VOC annotation file (memoized on its size and mtime; treat the result as read-only).

    Args:
        xml_file: The ``Annotations/<id>.xml`` path.

    Returns:
        The annotation, an error message naming the file when it is malformed or hostile, or
        None when the file does not exist.
    """
    try:
        st = os.stat(xml_file)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{xml_file}: unreadable VOC XML ({type(e).__name__})"
    return _parse_cached(xml_file, st.st_size, st.st_mtime_ns)
