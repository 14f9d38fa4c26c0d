"""Architecture diagrams (SVG or PNG) drawn from the per-layer summary with Graphviz's ``dot``.

No browser and no extra Python package: the DOT text is written here from
:func:`tinydigits.analysis.summarize` (so shapes, parameters and receptive fields are the
same numbers ``tinydigits summary`` prints) and rendered by the ``dot`` program.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..analysis import LayerInfo, summarize
from ..errors import TinyDigitsError
from ..io import atomic_write
from ..models import build_model, get_spec

__all__ = ["DIAGRAM_FORMATS", "DiagramError", "diagram_dot", "render_diagram"]

DIAGRAM_FORMATS = ("svg", "png")
# Layers drawn inside the box of the conv or pool before them rather than as boxes of their own.
_FOLLOWERS = ("ReLU", "BatchNorm2d", "Dropout")


class DiagramError(TinyDigitsError):
    """A diagram that cannot be drawn or written; the message is one line."""


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shape(layer: LayerInfo) -> str:
    return " x ".join(str(d) for d in layer.output_shape)


def _groups(layers: list[LayerInfo]) -> list[list[LayerInfo]]:
    """Each conv / pool with the ReLU, BatchNorm and Dropout layers that follow it."""
    groups: list[list[LayerInfo]] = []
    for layer in layers:
        if groups and layer.kind.split()[0] in _FOLLOWERS:
            groups[-1].append(layer)
        else:
            groups.append([layer])
    return groups


def diagram_dot(name: str) -> str:
    """The Graphviz DOT source for model ``name``: one box per conv or pool (with the
    pointwise layers after it), grouped by block, each with its output shape and parameters."""
    spec = get_spec(name)
    summary = summarize(build_model(spec.name), name=spec.name)
    title = f"{spec.title}: {summary.total_parameters:,} parameters, {summary.total_macs:,} MACs per image"
    lines = [
        "digraph tinydigits {",
        "  rankdir=TB; nodesep=0.25; ranksep=0.22;",
        f"  label={_quote(title)}; labelloc=t; fontname=Helvetica;",
        '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname=Helvetica, fontsize=10];',
        "  edge [arrowsize=0.6];",
        '  input [label="input\\n1 x 28 x 28", fillcolor="#ffffff"];',
    ]
    previous = "input"
    blocks: dict[str, list[str]] = {}
    is_global = False
    for index, group in enumerate(_groups(summary.layers)):
        head, last = group[0], group[-1]
        node = f"n{index}"
        text = [f"{head.kind}  ({head.name})"]
        if len(group) > 1:
            text.append(" -> ".join(layer.kind for layer in group[1:]))
        params = sum(layer.parameters for layer in group)
        is_global = is_global or "(global)" in head.kind  # from here on every unit sees the whole image
        rf = "global" if is_global else f"{last.receptive_field} px"
        text.append(f"{_shape(last)}   {params:,} params   RF {rf}")
        label = "\\n".join(t.replace('"', "'") for t in text)
        color = "#fdf1e4" if "Pool" in head.kind else "#eef3fb"
        blocks.setdefault(head.name.split(".")[0], []).append(
            f'    {node} [label="{label}", fillcolor="{color}"];'
        )
        lines.append(f"  {previous} -> {node};")
        previous = node
    for block, nodes in blocks.items():
        lines += [f"  subgraph cluster_{block} {{", f"    label={_quote(block)}; style=dashed; color=gray;",
                  *nodes, "  }"]
    lines += ['  output [label="flatten -> log_softmax\\n10", fillcolor="#ffffff"];',
              f"  {previous} -> output;", "}"]
    return "\n".join(lines) + "\n"


def render_diagram(name: str, path: str | Path, fmt: str | None = None) -> Path:
    """Draw model ``name`` to ``path``; the format (svg or png) comes from ``fmt`` or the suffix."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in DIAGRAM_FORMATS:
        raise DiagramError(f"{path}: cannot tell the format; use a .svg or .png file name")
    dot = shutil.which("dot")
    if dot is None:
        raise DiagramError("Graphviz's `dot` program is not installed (Debian: apt-get install graphviz)")
    try:
        proc = subprocess.run([dot, f"-T{fmt}"], input=diagram_dot(name).encode(), capture_output=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DiagramError(f"cannot run {dot}: {err}") from None
    if proc.returncode != 0 or not proc.stdout:
        message = " ".join(proc.stderr.decode(errors="replace").split())[:300]
        raise DiagramError(f"dot failed (exit {proc.returncode}): {message}")
    if path.is_dir():
        raise DiagramError(f"{path}: is a directory; give a file name")
    try:
        return atomic_write(path, lambda tmp: tmp.write_bytes(proc.stdout))
    except OSError as err:
        raise DiagramError(f"{path}: cannot write ({err.strerror or err})") from None
