"""Lay a plan out as a picture: boxes and edge routes that the SVG and PNG renderers draw.

Each body (the pipeline's tasks, a loop's, a group's) is laid out on its own, Sugiyama style:
a task's layer is one below the lowest task it waits for (a task that waits for nothing sits
just above the first task that needs it), an edge across several layers runs through small
placeholder points (one per layer it crosses, so it passes between boxes), a few sweeps order
each layer by the mean position of its neighbours (keeping the order with fewest crossings),
and each box is placed as near as the boxes beside it allow to the mean of its neighbours
(least squares, by pool-adjacent-violators). A container is laid out from the inside: its box
holds its body's picture under a header, and in its parent's body it is one box like any
task, so an edge to or from it attaches to its border. Edges always go down; boxes of one
body never overlap. Text widths are estimated from the characters, so the layout depends on
nothing but the plan, and the same plan gives the same picture every time.
"""

from __future__ import annotations

import bisect
import itertools
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

from orchestrator.plan import Body, Node, Plan
from orchestrator.spec.models import DynamicTaskGroup, PipelineGroup, WhileLoop

Point = tuple[float, float]
Role = Literal["task", "container", "pipeline", "note"]

TITLE_SIZE = 12.0  # font sizes, in pixels
SUBTITLE_SIZE = 10.0
_LEAF_HEIGHT = 44.0
_LEAF_WIDTH = (100.0, 240.0)  # a leaf box's narrowest and widest
_TEXT_PADDING = 12.0  # between a box's border and its text, on each side
_HEADER = 26.0  # a container's title band
_HEADING_WIDTH = 360.0  # the widest title a container grows for
_INSET = 12.0  # between a container's border and its body
_GAP_X = 24.0  # between boxes of one layer
_GAP_Y = 40.0  # between layers
_POINT_WIDTH = 8.0  # the room an edge passing through a layer takes
_MARGIN = 16.0  # around the picture
_SWEEPS = 8
_SHORT_KINDS = {"python_task": "python", "llm_task": "llm", "web_search_task": "search"}


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    width: float
    height: float

    @property
    def right(self) -> float:
        return self.x + self.width

    @property
    def bottom(self) -> float:
        return self.y + self.height

    def moved(self, dx: float, dy: float) -> Box:
        return replace(self, x=self.x + dx, y=self.y + dy)


@dataclass(frozen=True)
class Edge:
    """A dependency drawn from the bottom of `source` to the top of `target` (both paths).

    `points` run downward: where two follow each other at the same x the edge goes straight
    (through a layer), else it bends smoothly (see `controls`)."""

    source: str
    target: str
    points: tuple[Point, ...]

    def moved(self, dx: float, dy: float) -> Edge:
        return replace(self, points=tuple((x + dx, y + dy) for x, y in self.points))


@dataclass(frozen=True)
class Shape:
    """One box: a task, a container with its body, a child pipeline of a group, or a note.

    `path` names it uniquely: the names of the containers holding it and its own, joined by
    "/" (a child pipeline or a note: its container's path, "::", its index)."""

    role: Role
    name: str
    path: str
    kind: str  # the task's type; "pipeline" or "note" for the others
    title: str  # the first line, fitted to the box
    subtitle: str  # the second line (empty for containers: their title says it all)
    tooltip: str  # the full text: name, type, description, condition
    box: Box
    conditional: bool = False
    children: tuple[Shape, ...] = ()
    edges: tuple[Edge, ...] = ()

    def moved(self, dx: float, dy: float) -> Shape:
        return replace(
            self,
            box=self.box.moved(dx, dy),
            children=tuple(child.moved(dx, dy) for child in self.children),
            edges=tuple(edge.moved(dx, dy) for edge in self.edges),
        )


@dataclass(frozen=True)
class Layout:
    """The whole picture, in pixels: the pipeline's shapes and edges."""

    width: float
    height: float
    shapes: tuple[Shape, ...]
    edges: tuple[Edge, ...]

    def walk(self) -> Iterator[Shape]:
        """Every shape, each container before what it holds."""

        def visit(shapes: tuple[Shape, ...]) -> Iterator[Shape]:
            for shape in shapes:
                yield shape
                yield from visit(shape.children)

        return visit(self.shapes)


def controls(start: Point, end: Point) -> tuple[Point, Point]:
    """The two control points of the cubic curve from `start` down to `end`: it leaves and
    arrives vertically."""
    middle = (start[1] + end[1]) / 2
    return (start[0], middle), (end[0], middle)


def text_width(text: str, size: float) -> float:
    """An estimate of the width of TEXT in a sans-serif font of SIZE pixels."""
    width = 0.0
    for character in text:
        if unicodedata.combining(character):
            continue
        wide = unicodedata.east_asian_width(character) in {"W", "F"}
        width += size * (1.0 if wide else 0.62)
    return width


def fit(text: str, width: float, size: float) -> str:
    """TEXT on one line, cut with an ellipsis to fit WIDTH."""
    text = " ".join(text.split())
    if text_width(text, size) <= width + 1e-6:  # a box made to fit the text holds it
        return text
    while text and text_width(text + "…", size) > width:
        text = text[:-1]
    return text.rstrip() + "…"


def layout(plan: Plan) -> Layout:
    shapes, edges, width, height = _lay_out_body(plan.body, "")
    return Layout(
        width + 2 * _MARGIN,
        height + 2 * _MARGIN,
        tuple(shape.moved(_MARGIN, _MARGIN) for shape in shapes),
        tuple(edge.moved(_MARGIN, _MARGIN) for edge in edges),
    )


def _lay_out_body(body: Body, prefix: str) -> tuple[list[Shape], list[Edge], float, float]:
    """A body's shapes and edges, with its top left corner at (0, 0), and its size."""
    names = list(body.nodes)
    shapes = [_shape(body.nodes[name], prefix + name) for name in names]
    index = {name: position for position, name in enumerate(names)}
    links = [
        (index[dependency], index[name])
        for name in names
        for dependency in sorted(body.nodes[name].dependencies, key=index.__getitem__)
    ]
    return _place(shapes, links)


def _place(shapes: list[Shape], links: list[tuple[int, int]]) -> tuple[list[Shape], list[Edge], float, float]:
    graph = _Graph.layered([(shape.box.width, shape.box.height) for shape in shapes], links)
    graph.order()
    graph.position()
    placed = [shape.moved(graph.left[vertex], graph.top[vertex]) for vertex, shape in enumerate(shapes)]
    edges = [
        Edge(shapes[source].path, shapes[target].path, graph.route(source, target))
        for source, target in links
    ]
    return placed, edges, graph.width, graph.height


def _shape(node: Node, path: str) -> Shape:
    """NODE's shape with its top left corner at (0, 0), its body laid out inside it."""
    task = node.task
    # a while_loop's condition says when it goes on; any other task's, whether it runs
    conditional = task.condition is not None and not isinstance(task, WhileLoop)
    lines = [f"{node.name} ({node.kind})", task.description or ""]
    if task.condition is not None:
        lines.append(f"{'if' if conditional else 'while'} {task.condition}")
    tooltip = "\n".join(line for line in lines if line)
    if node.body is None and not isinstance(task, PipelineGroup | DynamicTaskGroup):
        subtitle = _SHORT_KINDS.get(node.kind, node.kind) + (", conditional" if conditional else "")
        width = max(text_width(node.name, TITLE_SIZE), text_width(subtitle, SUBTITLE_SIZE))
        width = min(max(width + 2 * _TEXT_PADDING, _LEAF_WIDTH[0]), _LEAF_WIDTH[1])
        inner = width - 2 * _TEXT_PADDING
        return Shape(
            "task",
            node.name,
            path,
            node.kind,
            fit(node.name, inner, TITLE_SIZE),
            fit(subtitle, inner, SUBTITLE_SIZE),
            tooltip,
            Box(0, 0, width, _LEAF_HEIGHT),
            conditional,
        )
    if node.body is not None:
        children, edges, body_width, body_height = _lay_out_body(node.body, path + "/")
    else:
        children, edges, body_width, body_height = _place(_contents(node, path), [])
    heading = f"{node.name} ({node.kind}"
    if isinstance(task, PipelineGroup):
        heading += f", {task.mode}"
    heading += ")"
    width = max(
        body_width + 2 * _INSET, min(text_width(heading, TITLE_SIZE), _HEADING_WIDTH) + 2 * _TEXT_PADDING
    )
    height = _HEADER + body_height + (_INSET if children else 0)
    dx = (width - body_width) / 2
    return Shape(
        "container",
        node.name,
        path,
        node.kind,
        fit(heading, width - 2 * _TEXT_PADDING, TITLE_SIZE),
        "",
        tooltip,
        Box(0, 0, width, height),
        conditional,
        tuple(child.moved(dx, _HEADER) for child in children),
        tuple(edge.moved(dx, _HEADER) for edge in edges),
    )


def _contents(node: Node, path: str) -> list[Shape]:
    """What a group without a body holds: its child pipelines, or a note on its tasks."""
    task = node.task
    if isinstance(task, PipelineGroup):
        return [
            _leaf("pipeline", child.pipeline, f"{path}::{index}", "pipeline", child.pipeline)
            for index, child in enumerate(task.pipelines)
        ]
    if isinstance(task, DynamicTaskGroup):
        text = "tasks made at run time" if isinstance(task.tasks, str) else f"{len(task.tasks)} task(s)"
        return [_leaf("note", text, f"{path}::0", "", text)]
    return []


def _leaf(role: Role, name: str, path: str, subtitle: str, tooltip: str) -> Shape:
    width = min(max(text_width(name, TITLE_SIZE) + 2 * _TEXT_PADDING, _LEAF_WIDTH[0]), _LEAF_WIDTH[1])
    title = fit(name, width - 2 * _TEXT_PADDING, TITLE_SIZE)
    return Shape(role, name, path, role, title, subtitle, tooltip, Box(0, 0, width, _LEAF_HEIGHT))


@dataclass
class _Graph:
    """A body as a layered graph: its boxes (vertices 0..n-1) and the points where long
    edges cross layers (vertices n..), each in a layer, in an order, at a position."""

    sizes: list[tuple[float, float]]  # a point's: (_POINT_WIDTH, 0)
    boxes: int
    layer_of: list[int]
    layers: list[list[int]]
    above: list[list[int]]  # the neighbours in the layer above
    below: list[list[int]]
    chains: dict[tuple[int, int], list[int]]  # each edge's vertices, from source to target
    left: list[float] = field(default_factory=list)
    top: list[float] = field(default_factory=list)
    width: float = 0.0
    height: float = 0.0
    row_top: list[float] = field(default_factory=list)
    row_height: list[float] = field(default_factory=list)

    @classmethod
    def layered(cls, sizes: list[tuple[float, float]], links: list[tuple[int, int]]) -> _Graph:
        count = len(sizes)
        sources: list[list[int]] = [[] for _ in range(count)]
        targets: list[list[int]] = [[] for _ in range(count)]
        for source, target in links:
            sources[target].append(source)
            targets[source].append(target)
        order = _topological(count, sources, targets)
        layer_of = [0] * count
        for vertex in order:
            layer_of[vertex] = max((layer_of[source] + 1 for source in sources[vertex]), default=0)
        for vertex in reversed(order):  # a task that waits for nothing sits just above its first reader
            if not sources[vertex] and targets[vertex]:
                layer_of[vertex] = min(layer_of[target] for target in targets[vertex]) - 1
        graph = cls(
            list(sizes), count, layer_of, [], [[] for _ in range(count)], [[] for _ in range(count)], {}
        )
        for source, target in links:
            chain = [source]
            for layer in range(layer_of[source] + 1, layer_of[target]):
                chain.append(graph._add_point(layer))
            chain.append(target)
            for upper, lower in itertools.pairwise(chain):
                graph.below[upper].append(lower)
                graph.above[lower].append(upper)
            graph.chains[(source, target)] = chain
        depth = max(graph.layer_of, default=-1) + 1
        graph.layers = [[] for _ in range(depth)]
        for vertex, layer in enumerate(graph.layer_of):  # file order first, points after
            graph.layers[layer].append(vertex)
        return graph

    def _add_point(self, layer: int) -> int:
        self.sizes.append((_POINT_WIDTH, 0.0))
        self.layer_of.append(layer)
        self.above.append([])
        self.below.append([])
        return len(self.sizes) - 1

    def order(self) -> None:
        """Reorder each layer by the mean place of its neighbours; keep the best ordering."""
        best = [list(layer) for layer in self.layers]
        fewest = self._crossings()
        for sweep in range(_SWEEPS):
            downward = sweep % 2 == 0
            indices = range(1, len(self.layers)) if downward else range(len(self.layers) - 2, -1, -1)
            for index in indices:
                self._reorder(index, index - 1 if downward else index + 1)
            crossings = self._crossings()
            if crossings < fewest:
                fewest, best = crossings, [list(layer) for layer in self.layers]
        self.layers = best

    def _reorder(self, index: int, beside: int) -> None:
        """Sort layer INDEX by the mean place of its neighbours in layer BESIDE (ties, and
        vertices without neighbours there, keep their place)."""
        place = {vertex: position for position, vertex in enumerate(self.layers[beside])}
        own = {vertex: position for position, vertex in enumerate(self.layers[index])}
        neighbours = self.above if beside < index else self.below

        def key(vertex: int) -> tuple[float, int]:
            found = neighbours[vertex]
            mean = sum(place[n] for n in found) / len(found) if found else float(own[vertex])
            return (mean, own[vertex])

        self.layers[index].sort(key=key)

    def _crossings(self) -> int:
        """How many pairs of edge segments cross between neighbouring layers: with the segments
        sorted by their upper end, the pairs whose lower ends are in the other order."""
        total = 0
        for upper, lower in itertools.pairwise(self.layers):
            place = {vertex: position for position, vertex in enumerate(lower)}
            ends = sorted(
                (position, place[target])
                for position, vertex in enumerate(upper)
                for target in self.below[vertex]
            )
            seen: list[int] = []
            for _, end in ends:
                total += len(seen) - bisect.bisect_right(seen, end)
                bisect.insort(seen, end)
        return total

    def position(self) -> None:
        """Give every vertex its left and top; the body's top left corner is (0, 0)."""
        count = len(self.sizes)
        centre = [0.0] * count
        for layer in self.layers:
            self._pack(layer, centre, [0.0] * len(layer))
        for direction in ("down", "up", "down", "up", "both"):
            layers = self.layers if direction != "up" else list(reversed(self.layers))
            for layer in layers:
                wanted = []
                for vertex in layer:
                    neighbours = {
                        "down": self.above[vertex],
                        "up": self.below[vertex],
                        "both": self.above[vertex] + self.below[vertex],
                    }[direction]
                    wanted.append(
                        sum(centre[n] for n in neighbours) / len(neighbours) if neighbours else centre[vertex]
                    )
                self._pack(layer, centre, wanted)
        offset = min((centre[v] - self.sizes[v][0] / 2 for v in range(count)), default=0.0)
        self.left = [centre[v] - self.sizes[v][0] / 2 - offset for v in range(count)]
        self.width = max((self.left[v] + self.sizes[v][0] for v in range(count)), default=0.0)
        self.row_height = [max(self.sizes[v][1] for v in layer) for layer in self.layers]
        y = 0.0
        for height in self.row_height:
            self.row_top.append(y)
            y += height + _GAP_Y
        self.height = max(y - _GAP_Y, 0.0)
        self.top = [
            self.row_top[self.layer_of[v]] + (self.row_height[self.layer_of[v]] - self.sizes[v][1]) / 2
            for v in range(count)
        ]

    def _pack(self, layer: list[int], centre: list[float], wanted: list[float]) -> None:
        """Set the centres of LAYER's vertices, in order and apart, as near WANTED as can be.

        With `offset` the least distance from the first centre to each one, centre - offset
        must not decrease along the layer: the closest such sequence to wanted - offset is
        its isotonic regression (pool adjacent violators)."""
        offsets: list[float] = []
        distance = 0.0
        for position, vertex in enumerate(layer):
            if position:
                previous = layer[position - 1]
                both_boxes = previous < self.boxes and vertex < self.boxes
                gap = _GAP_X if both_boxes else _GAP_X / 2
                distance += (self.sizes[previous][0] + self.sizes[vertex][0]) / 2 + gap
            offsets.append(distance)
        blocks: list[list[float]] = []  # [sum, count]
        for value in (w - o for w, o in zip(wanted, offsets, strict=True)):
            blocks.append([value, 1.0])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                total, size = blocks.pop()
                blocks[-1][0] += total
                blocks[-1][1] += size
        position = 0
        for total, size in blocks:
            for _ in range(int(size)):
                centre[layer[position]] = total / size + offsets[position]
                position += 1

    def route(self, source: int, target: int) -> tuple[Point, ...]:
        chain = self.chains[(source, target)]
        start = (self._port(source, chain[1], self.below), self.top[source] + self.sizes[source][1])
        points = [start]
        for point in chain[1:-1]:
            x = self.left[point] + _POINT_WIDTH / 2
            layer = self.layer_of[point]
            points += [(x, self.row_top[layer]), (x, self.row_top[layer] + self.row_height[layer])]
        points.append((self._port(target, chain[-2], self.above), self.top[target]))
        return tuple(points)

    def _port(self, vertex: int, neighbour: int, neighbours: list[list[int]]) -> float:
        """Where on VERTEX's border the edge to NEIGHBOUR attaches: its edges spread along it
        in the order of the other ends."""
        others = sorted(neighbours[vertex], key=lambda other: (self.left[other], other))
        width = self.sizes[vertex][0]
        spread = min(width * 0.6, 16.0 * (len(others) - 1))
        step = spread / (len(others) - 1) if len(others) > 1 else 0.0
        return self.left[vertex] + (width - spread) / 2 + step * others.index(neighbour)


def _topological(count: int, sources: list[list[int]], targets: list[list[int]]) -> list[int]:
    """The vertices, each after those it waits for, otherwise in file order (the plan has no cycles)."""
    waiting = [len(set(found)) for found in sources]
    ready = [vertex for vertex in range(count) if not waiting[vertex]]
    order: list[int] = []
    while ready:
        ready.sort()
        vertex = ready.pop(0)
        order.append(vertex)
        for target in sorted(set(targets[vertex])):
            waiting[target] -= 1
            if not waiting[target]:
                ready.append(target)
    return order
