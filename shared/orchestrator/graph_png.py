"""Draw a plan as a PNG image with Pillow: the SVG's layout and colours, rasterized.

The picture is `graph_layout.layout(plan)` at two pixels per layout pixel, less for a picture
so big that the image would pass _MOST_PIXELS or _MOST_SIDE (a huge pipeline gives a smaller
scale, not an image too big to open); text is Pillow's default font, cut with an ellipsis where
the font is wider than the layout's estimate.
"""

from __future__ import annotations

import io
import itertools
import math

from PIL import Image, ImageDraw, ImageFont

from orchestrator.graph_layout import SUBTITLE_SIZE, TITLE_SIZE, Edge, Point, Shape, controls, layout
from orchestrator.graph_svg import CONTAINER_COLOURS, CONTAINER_OPACITY, EDGE_COLOUR, KIND_COLOURS
from orchestrator.plan import Plan

_SCALE = 2.0
_MOST_PIXELS = 32_000_000
_MOST_SIDE = 16_000
_CURVE_STEPS = 16
_CONDITION_MARK = "#d99a00"

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def png_scale(width: float, height: float) -> float:
    """Image pixels per layout pixel for a layout WIDTH x HEIGHT."""
    return min(_SCALE, math.sqrt(_MOST_PIXELS / (width * height)), _MOST_SIDE / width, _MOST_SIDE / height)


def png_size(width: float, height: float) -> tuple[int, int]:
    """The image size of a layout WIDTH x HEIGHT."""
    scale = png_scale(width, height)
    return math.floor(width * scale), math.floor(height * scale)


def render_png(plan: Plan) -> bytes:
    """The plan as PNG bytes."""
    picture = layout(plan)
    image = Image.new("RGB", png_size(picture.width, picture.height), "#ffffff")
    painter = _Painter(ImageDraw.Draw(image, "RGBA"), png_scale(picture.width, picture.height))
    painter.body(picture.shapes, picture.edges)
    output = io.BytesIO()
    image.save(output, format="PNG", optimize=True)
    return output.getvalue()


class _Painter:
    def __init__(self, draw: ImageDraw.ImageDraw, scale: float) -> None:
        self.draw = draw
        self.scale = scale
        self.line = max(1, round(scale * 1.5))  # the width of borders and edges
        self.title_font: Font = ImageFont.load_default(size=max(TITLE_SIZE * scale, 1.0))
        self.subtitle_font: Font = ImageFont.load_default(size=max(SUBTITLE_SIZE * scale, 1.0))

    def body(self, shapes: tuple[Shape, ...], edges: tuple[Edge, ...]) -> None:
        for shape in shapes:
            self.shape(shape)
        for edge in edges:
            self.edge(edge)

    def shape(self, shape: Shape) -> None:
        box = shape.box
        corners = (box.x * self.scale, box.y * self.scale, box.right * self.scale, box.bottom * self.scale)
        if shape.role == "container":
            fill, stroke, ink = CONTAINER_COLOURS
            tint = (*_rgb(fill), round(255 * CONTAINER_OPACITY))
            self.draw.rounded_rectangle(corners, radius=4 * self.scale, fill=tint)
        else:
            fill, stroke, ink = KIND_COLOURS.get(shape.kind, KIND_COLOURS["note"])
            self.draw.rounded_rectangle(corners, radius=6 * self.scale, fill=fill)
        if shape.conditional or shape.role == "note":
            self._dashed_outline(corners, stroke)
        else:
            radius = (4 if shape.role == "container" else 6) * self.scale
            self.draw.rounded_rectangle(corners, radius=radius, outline=stroke, width=self.line)
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
            x, y = (box.right - 10) * self.scale, (box.y + 10) * self.scale
            size = 5 * self.scale
            self.draw.polygon(
                [(x, y - size), (x + size, y), (x, y + size), (x - size, y)], fill=_CONDITION_MARK
            )

    def _dashed_outline(self, corners: tuple[float, float, float, float], colour: str) -> None:
        left, top, right, bottom = corners
        dash, space = 5 * self.scale, 3 * self.scale
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
                    width=self.line,
                )
                position = stop + space

    def text(self, at: Point, text: str, font: Font, colour: str, width: float, anchor: str) -> None:
        """TEXT at AT (layout pixels), cut further if this font makes it wider than WIDTH."""
        limit = width * self.scale
        if self.draw.textlength(text, font=font) > limit:
            while text and self.draw.textlength(text + "…", font=font) > limit:
                text = text[:-1]
            text += "…"
        self.draw.text((at[0] * self.scale, at[1] * self.scale), text, font=font, fill=colour, anchor=anchor)

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
        scaled = [(x * self.scale, y * self.scale) for x, y in points]
        tip = scaled[-1]
        arrow = 7 * self.scale
        base = tip[1] - arrow * 0.8
        shaft = [point for point in scaled[:-1] if point[1] <= base] + [(tip[0], base)]
        self.draw.line(shaft, fill=EDGE_COLOUR, width=self.line, joint="curve")
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
