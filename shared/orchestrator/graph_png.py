"""Draw a plan as a PNG image with Pillow: the SVG's layout and colours, rasterized.

The picture is `graph_layout.layout(plan)` at SCALE pixels per layout pixel; text is Pillow's
default font, cut with an ellipsis where the font is wider than the layout's estimate.
"""

from __future__ import annotations

import io
import itertools
import math

from PIL import Image, ImageDraw, ImageFont

from orchestrator.graph_layout import SUBTITLE_SIZE, TITLE_SIZE, Edge, Point, Shape, controls, layout
from orchestrator.graph_svg import CONTAINER_COLOURS, CONTAINER_OPACITY, EDGE_COLOUR, KIND_COLOURS
from orchestrator.plan import Plan

SCALE = 2
_CURVE_STEPS = 16
_CONDITION_MARK = "#d99a00"

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def png_size(width: float, height: float) -> tuple[int, int]:
    """The image size of a layout WIDTH x HEIGHT."""
    return math.ceil(width * SCALE), math.ceil(height * SCALE)


def render_png(plan: Plan) -> bytes:
    """The plan as PNG bytes."""
    picture = layout(plan)
    image = Image.new("RGB", png_size(picture.width, picture.height), "#ffffff")
    painter = _Painter(ImageDraw.Draw(image, "RGBA"))
    painter.body(picture.shapes, picture.edges)
    output = io.BytesIO()
    image.save(output, format="PNG", optimize=True)
    return output.getvalue()


class _Painter:
    def __init__(self, draw: ImageDraw.ImageDraw) -> None:
        self.draw = draw
        self.title_font: Font = ImageFont.load_default(size=TITLE_SIZE * SCALE)
        self.subtitle_font: Font = ImageFont.load_default(size=SUBTITLE_SIZE * SCALE)

    def body(self, shapes: tuple[Shape, ...], edges: tuple[Edge, ...]) -> None:
        for shape in shapes:
            self.shape(shape)
        for edge in edges:
            self.edge(edge)

    def shape(self, shape: Shape) -> None:
        box = shape.box
        corners = (box.x * SCALE, box.y * SCALE, box.right * SCALE, box.bottom * SCALE)
        if shape.role == "container":
            fill, stroke, ink = CONTAINER_COLOURS
            tint = (*_rgb(fill), round(255 * CONTAINER_OPACITY))
            self.draw.rounded_rectangle(corners, radius=4 * SCALE, fill=tint)
        else:
            fill, stroke, ink = KIND_COLOURS.get(shape.kind, KIND_COLOURS["note"])
            self.draw.rounded_rectangle(corners, radius=6 * SCALE, fill=fill)
        if shape.conditional or shape.role == "note":
            self._dashed_outline(corners, stroke)
        else:
            radius = (4 if shape.role == "container" else 6) * SCALE
            self.draw.rounded_rectangle(corners, radius=radius, outline=stroke, width=SCALE + 1)
        if shape.role == "container":
            self.text((box.x + 10, box.y + 13), shape.title, self.title_font, ink, box.width - 20, "lm")
            self.body(shape.children, shape.edges)
        else:
            centre = box.x + box.width / 2
            title_y = box.y + (15 if shape.subtitle else box.height / 2)
            self.text((centre, title_y), shape.title, self.title_font, ink, box.width - 16, "mm")
            if shape.subtitle:
                self.text((centre, box.y + 31), shape.subtitle, self.subtitle_font, ink, box.width - 16, "mm")
        if shape.conditional:
            x, y = (box.right - 10) * SCALE, (box.y + 10) * SCALE
            size = 5 * SCALE
            self.draw.polygon(
                [(x, y - size), (x + size, y), (x, y + size), (x - size, y)], fill=_CONDITION_MARK
            )

    def _dashed_outline(self, corners: tuple[float, float, float, float], colour: str) -> None:
        left, top, right, bottom = corners
        dash, space = 5 * SCALE, 3 * SCALE
        for start, end in (
            ((left, top), (right, top)),
            ((right, top), (right, bottom)),
            ((right, bottom), (left, bottom)),
            ((left, bottom), (left, top)),
        ):
            length = math.dist(start, end)
            position = 0.0
            while position < length:
                stop = min(position + dash, length)
                self.draw.line(
                    [_along(start, end, position / length), _along(start, end, stop / length)],
                    fill=colour,
                    width=SCALE + 1,
                )
                position = stop + space

    def text(self, at: Point, text: str, font: Font, colour: str, width: float, anchor: str) -> None:
        """TEXT at AT (layout pixels), cut further if this font makes it wider than WIDTH."""
        limit = width * SCALE
        if self.draw.textlength(text, font=font) > limit:
            while text and self.draw.textlength(text + "…", font=font) > limit:
                text = text[:-1]
            text += "…"
        self.draw.text((at[0] * SCALE, at[1] * SCALE), text, font=font, fill=colour, anchor=anchor)

    def edge(self, edge: Edge) -> None:
        points: list[Point] = [edge.points[0]]
        for start, end in itertools.pairwise(edge.points):
            if start[0] == end[0]:
                points.append(end)
            else:
                first, second = controls(start, end)
                points += [
                    _bezier(start, first, second, end, step / _CURVE_STEPS)
                    for step in range(1, _CURVE_STEPS + 1)
                ]
        scaled = [(x * SCALE, y * SCALE) for x, y in points]
        tip = scaled[-1]
        arrow = 7 * SCALE
        base = tip[1] - arrow * 0.8
        shaft = [point for point in scaled[:-1] if point[1] <= base] + [(tip[0], base)]
        self.draw.line(shaft, fill=EDGE_COLOUR, width=SCALE + 1, joint="curve")
        self.draw.polygon(
            [(tip[0] - arrow / 2, tip[1] - arrow), (tip[0] + arrow / 2, tip[1] - arrow), tip],
            fill=EDGE_COLOUR,
        )


def _along(start: Point, end: Point, fraction: float) -> Point:
    return start[0] + (end[0] - start[0]) * fraction, start[1] + (end[1] - start[1]) * fraction


def _bezier(start: Point, first: Point, second: Point, end: Point, t: float) -> Point:
    u = 1 - t
    return (
        u**3 * start[0] + 3 * u * u * t * first[0] + 3 * u * t * t * second[0] + t**3 * end[0],
        u**3 * start[1] + 3 * u * u * t * first[1] + 3 * u * t * t * second[1] + t**3 * end[1],
    )


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
