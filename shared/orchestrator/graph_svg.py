"""Draw a plan as a standalone SVG picture, from `graph_layout`'s layout.

The markup is a contract with the web UI, which restyles it by adding classes:

- every task is `<g class="task kind-KIND" data-task=NAME data-path=PATH data-kind=KIND>` around
  its `rect.box` and its text (`conditional` added to the class when it has a condition);
- a loop or group is `<g class="task container ...">` with the same data, its `rect.box`, its
  title and a `g.body` holding its tasks and edges;
- a dependency is `<path class="edge" data-from=PATH data-to=PATH>` (paths: see `Shape.path`;
  for a task of the pipeline itself its path is its name);
- a group's child pipeline is `g.pipeline`, a dynamic group's note `g.note`.

Colours come from the stylesheet in the file, scoped to `svg.orchestrator-graph`: a class
`status-<status>` on a task's group colours its box. All text is escaped.
"""

from __future__ import annotations

import itertools
import re
from xml.sax.saxutils import escape, quoteattr

from orchestrator.graph_layout import (
    SUBTITLE_SIZE,
    TITLE_SIZE,
    Edge,
    Shape,
    controls,
    layout,
)
from orchestrator.plan import Plan

# fill, border and text colour of each kind of box, and of each task status
KIND_COLOURS = {
    "python_task": ("#eaf1fd", "#3d6fd1", "#16294d"),
    "llm_task": ("#f2ebfd", "#7a4fcf", "#2c1850"),
    "web_search_task": ("#e6f6ef", "#2a9466", "#0f3b28"),
    "pipeline": ("#fdf4e3", "#c7841b", "#4a3008"),
    "note": ("#fafafa", "#8c8c8c", "#444444"),
}
CONTAINER_COLOURS = ("#3c4658", "#7d8597", "#2a3140")  # fill (see CONTAINER_OPACITY), border, text
CONTAINER_OPACITY = 0.05
EDGE_COLOUR = "#6b7280"
STATUS_COLOURS = {
    "pending": ("#ffffff", "#9ca3af"),
    "running": ("#fff8db", "#d99a00"),
    "succeeded": ("#e3f5e1", "#2f8a3b"),
    "cached": ("#e0f2f4", "#1f8391"),
    "fallback": ("#fdf0dc", "#cc7a00"),
    "skipped": ("#f1f2f4", "#a3a8b3"),
    "failed": ("#fde5e4", "#c8322b"),
    "cancelled": ("#f1f2f4", "#6b7280"),
    "not_run": ("#f7f7f8", "#c2c6cd"),
}
_ARROW = "orchestrator-graph-arrow"
# characters XML 1.0 cannot hold, even escaped
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def render_svg(plan: Plan) -> str:
    """The plan as an SVG document (UTF-8 text)."""
    picture = layout(plan)
    width, height = _number(picture.width), _number(picture.height)
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="orchestrator-graph" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" data-pipeline={_attribute(plan.pipeline_id)}>',
        f"<title>{_text(plan.pipeline_id)}</title>",
        f"<style>{_stylesheet()}</style>",
        "<defs>",
        f'<marker id="{_ARROW}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse">',
        '<path class="arrow" d="M0,0 L10,5 L0,10 z"/>',
        "</marker>",
        "</defs>",
        '<rect class="background" x="0" y="0" width="100%" height="100%"/>',
    ]
    _draw_body(lines, picture.shapes, picture.edges)
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def _draw_body(lines: list[str], shapes: tuple[Shape, ...], edges: tuple[Edge, ...]) -> None:
    for shape in shapes:
        _draw_shape(lines, shape)
    for edge in edges:
        lines.append(
            f'<path class="edge" data-from={_attribute(edge.source)} data-to={_attribute(edge.target)} '
            f'd="{_path_data(edge)}" marker-end="url(#{_ARROW})"/>'
        )


def _draw_shape(lines: list[str], shape: Shape) -> None:
    box = shape.box
    classes: list[str] = [shape.role]
    data = ""
    if shape.role in {"task", "container"}:
        classes = ["task", *(["container"] if shape.role == "container" else []), f"kind-{shape.kind}"]
        data = (
            f" data-task={_attribute(shape.name)} data-path={_attribute(shape.path)}"
            f" data-kind={_attribute(shape.kind)}"
        )
    elif shape.role == "pipeline":
        data = f" data-pipeline={_attribute(shape.name)}"
    if shape.conditional:
        classes.append("conditional")
    lines.append(f'<g class="{" ".join(classes)}"{data}>')
    lines.append(f"<title>{_text(shape.tooltip)}</title>")
    radius = 4 if shape.role == "container" else 6
    lines.append(
        f'<rect class="box" x="{_number(box.x)}" y="{_number(box.y)}" width="{_number(box.width)}" '
        f'height="{_number(box.height)}" rx="{radius}"/>'
    )
    centre = _number(box.x + box.width / 2)
    if shape.role == "container":
        lines.append(
            f'<text class="label title" x="{_number(box.x + 10)}" y="{_number(box.y + 17)}">'
            f"{_text(shape.title)}</text>"
        )
        lines.append('<g class="body">')
        _draw_body(lines, shape.children, shape.edges)
        lines.append("</g>")
    else:
        title_y = box.y + (19 if shape.subtitle else box.height / 2 + 4)
        lines.append(
            f'<text class="label title" x="{centre}" y="{_number(title_y)}" text-anchor="middle">'
            f"{_text(shape.title)}</text>"
        )
        if shape.subtitle:
            lines.append(
                f'<text class="label subtitle" x="{centre}" y="{_number(box.y + 34)}" '
                f'text-anchor="middle">{_text(shape.subtitle)}</text>'
            )
    if shape.conditional:
        x, y = box.right - 10, box.y + 10
        lines.append(
            f'<path class="condition-mark" d="M{_number(x)},{_number(y - 5)} L{_number(x + 5)},{_number(y)} '
            f'L{_number(x)},{_number(y + 5)} L{_number(x - 5)},{_number(y)} z"/>'
        )
    lines.append("</g>")


def _path_data(edge: Edge) -> str:
    points = edge.points
    parts = [f"M{_number(points[0][0])},{_number(points[0][1])}"]
    for start, end in itertools.pairwise(points):
        if start[0] == end[0]:
            parts.append(f"L{_number(end[0])},{_number(end[1])}")
        else:
            (ax, ay), (bx, by) = controls(start, end)
            corners = ((ax, ay), (bx, by), end)
            parts.append("C" + " ".join(f"{_number(x)},{_number(y)}" for x, y in corners))
    return " ".join(parts)


def _stylesheet() -> str:
    root = ".orchestrator-graph"
    rules = [
        f"{root} .background{{fill:#ffffff}}",
        f"{root} text{{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;"
        f"font-size:{_number(TITLE_SIZE)}px}}",
        f"{root} .subtitle{{font-size:{_number(SUBTITLE_SIZE)}px;opacity:0.75}}",
        f"{root} .container > .title{{font-weight:600}}",
        f"{root} .box{{stroke-width:1.5}}",
        f"{root} .edge{{fill:none;stroke:{EDGE_COLOUR};stroke-width:1.5}}",
        f"{root} .arrow{{fill:{EDGE_COLOUR}}}",
        f"{root} .conditional > .box{{stroke-dasharray:5 3}}",
        f"{root} .condition-mark{{fill:#d99a00}}",
        f"{root} .note > .box{{stroke-dasharray:3 3}}",
    ]
    fill, stroke, ink = CONTAINER_COLOURS
    rules.append(f"{root} .container > .box{{fill:{fill};fill-opacity:{CONTAINER_OPACITY};stroke:{stroke}}}")
    rules.append(f"{root} .container > text{{fill:{ink}}}")
    for kind, (fill, stroke, ink) in KIND_COLOURS.items():
        selector = f".kind-{kind}" if kind not in {"pipeline", "note"} else f".{kind}"
        rules.append(f"{root} {selector} > .box{{fill:{fill};stroke:{stroke}}}")
        rules.append(f"{root} {selector} > text{{fill:{ink}}}")
    for status, (fill, stroke) in STATUS_COLOURS.items():
        rules.append(f"{root} .task.status-{status} > .box{{fill:{fill};fill-opacity:1;stroke:{stroke}}}")
    return "".join(rules)


def _number(value: float) -> str:
    """A coordinate with at most one decimal, without a trailing '.0'."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _text(text: str) -> str:
    return escape(_clean(text))


def _attribute(text: str) -> str:
    """A quoted attribute value that reads back as TEXT (line breaks and tabs kept)."""
    return quoteattr(_clean(text), {"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})
