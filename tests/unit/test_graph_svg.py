"""`orchestrator graph --format svg|png`: a picture of the plan, every task once, edges as the
dependencies, boxes apart and edges downward.

The SVG is read back with xml.etree (the markup the web UI relies on: `g.task` with data-task,
data-path and data-kind, `path.edge` with data-from and data-to); the geometry is checked on
the layout both renderers draw, over the bundled pipelines and random nested DAGs.
"""

from __future__ import annotations

import io
import itertools
import os
import pty
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import PIPELINES, REPO, CliResult
from orchestrator.graph_layout import TITLE_SIZE, Box, Layout, Shape, layout, text_width
from orchestrator.graph_png import png_size, render_png
from orchestrator.graph_svg import KIND_COLOURS, STATUS_COLOURS, render_svg
from orchestrator.plan import Body, Plan, build_plan
from orchestrator.runtime.documents import TaskStatus
from orchestrator.spec.loading import parse_pipeline, read_pipeline

SVG = "{http://www.w3.org/2000/svg}"
BUNDLED = sorted(PIPELINES.glob("*.yaml"))


def plan_tasks(body: Body, prefix: str = "") -> dict[str, tuple[str, str]]:
    """Every task of the plan by path: its name and type."""
    found: dict[str, tuple[str, str]] = {}
    for name, node in body.nodes.items():
        found[prefix + name] = (name, node.kind)
        if node.body is not None:
            found |= plan_tasks(node.body, f"{prefix}{name}/")
    return found


def plan_edges(body: Body, prefix: str = "") -> set[tuple[str, str]]:
    edges = {
        (prefix + dependency, prefix + name)
        for name, node in body.nodes.items()
        for dependency in node.dependencies
    }
    for name, node in body.nodes.items():
        if node.body is not None:
            edges |= plan_edges(node.body, f"{prefix}{name}/")
    return edges


def svg_tasks(root: ET.Element) -> dict[str, ET.Element]:
    """The `g.task` elements by data-path; each path once, nested as the plan nests."""
    found: dict[str, ET.Element] = {}

    def visit(element: ET.Element, container: str | None) -> None:
        for child in element:
            inner = container
            if child.tag == f"{SVG}g" and "task" in child.get("class", "").split():
                path = child.get("data-path", "")
                assert path not in found, f"{path} drawn twice"
                found[path] = child
                parent, _, name = path.rpartition("/")
                assert child.get("data-task") == name
                assert (parent or None) == container, (path, container)
                inner = path
            visit(child, inner)

    visit(root, None)
    return found


def check_svg(plan: Plan, text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    width, height = float(root.get("width", "")), float(root.get("height", ""))
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}" and width > 0 < height
    tasks = svg_tasks(root)
    expected = plan_tasks(plan.body)
    assert set(tasks) == set(expected)
    for path, (name, kind) in expected.items():
        element = tasks[path]
        assert element.get("data-task") == name and element.get("data-kind") == kind
        classes = element.get("class", "").split()
        assert ("container" in classes) == (element.find(f"{SVG}g[@class='body']") is not None)
        assert element.find(f"{SVG}rect[@class='box']") is not None
    edges = [
        (edge.get("data-from", ""), edge.get("data-to", ""))
        for edge in root.iter(f"{SVG}path")
        if edge.get("class") == "edge"
    ]
    assert sorted(edges) == sorted(plan_edges(plan.body))
    return root


def boxes(picture: Layout) -> Iterator[tuple[Shape, list[Shape]]]:
    """Each body of the picture: its container (None at the top) and its shapes."""
    yield (
        Shape("container", "", "", "", "", "", "", Box(0, 0, picture.width, picture.height)),
        list(picture.shapes),
    )
    for shape in picture.walk():
        if shape.role == "container":
            yield shape, list(shape.children)


def apart(first: Box, second: Box) -> bool:
    return (
        first.right <= second.x
        or second.right <= first.x
        or first.bottom <= second.y
        or second.bottom <= first.y
    )


def inside(inner: Box, outer: Box) -> bool:
    return (
        outer.x <= inner.x
        and inner.right <= outer.right
        and outer.y <= inner.y
        and inner.bottom <= outer.bottom
    )


def check_geometry(picture: Layout) -> None:
    by_path = {shape.path: shape for shape in picture.walk()}
    for shape in by_path.values():  # text is cut only where the box is as wide as it grows
        if shape.role == "task" and shape.title != shape.name:
            assert shape.box.width == 240 and shape.title.endswith("…"), shape.title
        if shape.role == "container" and shape.kind != "pipeline_group" and shape.title.endswith("…"):
            assert text_width(f"{shape.name} ({shape.kind})", TITLE_SIZE) > shape.box.width - 24
    for container, shapes in boxes(picture):
        for index, shape in enumerate(shapes):
            assert inside(shape.box, container.box), (shape.path, container.path)
            for other in shapes[index + 1 :]:
                assert apart(shape.box, other.box), (shape.path, other.path)
        edges = picture.edges if not container.path else container.edges
        for edge in edges:
            source, target = by_path[edge.source].box, by_path[edge.target].box
            (start_x, start_y), (end_x, end_y) = edge.points[0], edge.points[-1]
            assert start_y == source.bottom and source.x <= start_x <= source.right
            assert end_y == target.y and target.x <= end_x <= target.right
            assert start_y < end_y
            for (x1, y1), (x2, y2) in itertools.pairwise(edge.points):
                assert y1 <= y2, f"{edge.source} -> {edge.target} goes up"
                if x1 == x2 and y1 < y2:  # through a layer: between its boxes, never across one
                    for shape in shapes:
                        box = shape.box
                        assert not (box.x < x1 < box.right and y1 < box.bottom and box.y < y2), (
                            edge.source,
                            edge.target,
                            shape.path,
                        )


@pytest.mark.parametrize("path", BUNDLED, ids=lambda path: path.stem)
def test_bundled_pipelines_draw_every_task_once_and_every_dependency(path: Path) -> None:
    plan = build_plan(read_pipeline(path))
    text = render_svg(plan)
    check_svg(plan, text)
    check_geometry(layout(plan))
    # the same plan gives the same picture
    assert render_svg(build_plan(read_pipeline(path))) == text


def test_containers_hold_their_bodies_and_edges_attach_to_them(write_pipeline: Callable[..., Path]) -> None:
    plan = build_plan(read_pipeline(PIPELINES / "demo.yaml"))
    root = check_svg(plan, render_svg(plan))
    tasks = svg_tasks(root)
    loop = tasks["score_words"]
    assert loop.get("class", "").split() == ["task", "container", "kind-for_loop"]
    assert tasks["score_words/score"] in list(loop.iter())
    # a condition shows on the task: a dashed border (class) and a mark
    note = tasks["long_list_note"]
    assert "conditional" in note.get("class", "").split()
    assert note.find(f"{SVG}path[@class='condition-mark']") is not None
    assert "conditional" not in tasks["prepare"].get("class", "").split()


def test_every_task_status_has_a_colour() -> None:
    assert {status.value for status in TaskStatus} <= set(STATUS_COLOURS)
    stylesheet = render_svg(build_plan(read_pipeline(PIPELINES / "demo.yaml")))
    for status in TaskStatus:
        assert f".task.status-{status.value} > .box{{" in stylesheet


def test_groups_without_a_body_show_what_they_hold(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(
        """
        name: groups
        tasks:
          - name: children
            type: pipeline_group
            mode: sequential
            pipelines:
              - pipeline: first.yaml
              - pipeline: second.yaml
          - name: generated
            type: dynamic_task_group
            depends_on: [children]
            tasks: "{{ children }}"
        """
    )
    plan = build_plan(read_pipeline(path))
    root = check_svg(plan, render_svg(plan))
    tasks = svg_tasks(root)
    pipelines = [
        g.get("data-pipeline") for g in tasks["children"].iter(f"{SVG}g") if g.get("class") == "pipeline"
    ]
    assert pipelines == ["first.yaml", "second.yaml"]
    notes = [g for g in tasks["generated"].iter(f"{SVG}g") if g.get("class") == "note"]
    assert len(notes) == 1
    assert "".join(notes[0].itertext()).count("tasks made at run time") == 2  # the text and its tooltip
    check_geometry(layout(plan))


HOSTILE = "<script>alert('x')</script> & \"quoted\" ]]> \x07bell \u202eevil"


def test_hostile_text_is_escaped_and_reads_back(tmp_path: Path) -> None:
    # GIVEN a file name, a description, a condition and a child pipeline path full of markup
    folder = tmp_path / "odd"
    folder.mkdir()
    path = folder / '<svg onload=alert(1)> & "x".yaml'
    description = HOSTILE.replace("\\", "\\\\").replace('"', '\\"').replace("\x07", "\\a")
    long_name = "n" * 120
    path.write_text(
        textwrap.dedent(
            f"""
            name: hostile
            tasks:
              - name: {long_name}
                type: python_task
                description: "{description}"
                condition: "{{{{ 1 < 2 and '<b>' != \\"&amp;\\" }}}}"
                script: return 1
              - name: group
                type: pipeline_group
                pipelines:
                  - pipeline: "</text><script>x</script>.yaml"
            """
        ),
        encoding="utf-8",
    )
    plan = build_plan(read_pipeline(path))
    # WHEN it is drawn
    text = render_svg(plan)
    # THEN the document parses, holds only the elements the renderer writes, and says the text as given
    root = check_svg(plan, text)
    tags = {element.tag.removeprefix(SVG) for element in root.iter()}
    assert tags <= {"svg", "title", "style", "defs", "marker", "path", "rect", "g", "text"}
    assert root.get("data-pipeline") == path.stem
    task = svg_tasks(root)[long_name]
    tooltip = task.findtext(f"{SVG}title") or ""
    assert HOSTILE.replace("\x07", "\ufffd") in tooltip  # XML cannot hold a BEL: shown as U+FFFD
    assert "if {{ 1 < 2 and '<b>' != \"&amp;\" }}" in tooltip
    # AND the long name is cut with an ellipsis in its box, but whole in data-task
    title = next(t for t in task.iter(f"{SVG}text") if "title" in t.get("class", "")).text or ""
    assert title.endswith("…") and long_name.startswith(title[:-1]) and len(title) < 40
    pipelines = [g.get("data-pipeline") for g in root.iter(f"{SVG}g") if g.get("class") == "pipeline"]
    assert pipelines == ["</text><script>x</script>.yaml"]


def test_png_is_the_same_layout(write_pipeline: Callable[..., Path]) -> None:
    plan = build_plan(read_pipeline(PIPELINES / "demo.yaml"))
    picture = layout(plan)
    image = Image.open(io.BytesIO(render_png(plan)))
    assert image.format == "PNG" and image.size == png_size(picture.width, picture.height)
    # each task's box is painted in its colour where the layout put it (left of its text)
    rgb = image.convert("RGB")
    for shape in picture.walk():
        if shape.role == "task":
            scale = image.size[0] / picture.width
            x, y = (shape.box.x + 4) * scale, (shape.box.y + shape.box.height / 2) * scale
            fill = KIND_COLOURS[shape.kind][0]
            assert rgb.getpixel((int(x), int(y))) == tuple(int(fill[i : i + 2], 16) for i in (1, 3, 5))


# random pipelines: a tree of bodies, each a DAG of tasks whose edges are depends_on (to earlier
# or later siblings: file order need not be the order of the edges)
KINDS = ["python_task", "for_loop", "parallel_group", "while_loop"]


@st.composite
def bodies(draw: st.DrawFn, depth: int, counter: list[int]) -> list[str]:
    """The YAML lines of a body's tasks (unindented)."""
    size = draw(st.integers(1, 7 if depth == 0 else 4))
    names = []
    for _ in range(size):
        counter[0] += 1
        names.append(f"t{counter[0]}" + "_x" * draw(st.integers(0, 12)))
    # edges go from lower to higher rank; the file order is a shuffle of the ranks
    dependencies = [
        draw(st.sets(st.sampled_from(names[:rank]), max_size=3)) if rank else set() for rank in range(size)
    ]
    order = draw(st.permutations(range(size)))
    lines: list[str] = []
    for rank in order:
        kind = draw(st.sampled_from(KINDS if depth < 2 else KINDS[:1]))
        lines += [f"- name: {names[rank]}", f"  type: {kind}"]
        if dependencies[rank]:
            lines.append(f"  depends_on: [{', '.join(sorted(dependencies[rank]))}]")
        if kind == "python_task":
            lines.append("  script: return 1")
            if draw(st.booleans()):
                lines.append('  condition: "{{ true }}"')
        else:
            if kind == "for_loop":
                lines.append("  iterate_over: [1, 2]")
            if kind == "while_loop":
                lines += ['  condition: "{{ false }}"', "  max_iterations: 2"]
            lines.append("  tasks:")
            lines += ["    " + line for line in draw(bodies(depth + 1, counter))]
    return lines


@st.composite
def pipelines(draw: st.DrawFn) -> str:
    lines = draw(bodies(0, [0]))
    return "name: random\ntasks:\n" + "\n".join("  " + line for line in lines) + "\n"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipelines())
def test_random_pipelines_lay_out_apart_and_downward(text: str) -> None:
    plan = build_plan(parse_pipeline(text, Path("random.yaml")))
    picture = layout(plan)
    check_geometry(picture)
    check_svg(plan, render_svg(plan))


def test_cli_writes_svg_and_png(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    demo = PIPELINES / "demo.yaml"
    plan = build_plan(read_pipeline(demo))
    result = cli("graph", demo, "--format", "svg")
    assert result.code == 0 and result.stdout == render_svg(plan)
    output = tmp_path / "out" / "demo.png"
    result = cli("graph", demo, "--format", "png", "-o", output)
    assert result.code == 0 and result.stdout == "" and f"wrote {output}" in result.stderr
    with Image.open(output) as image:
        assert image.size == png_size(layout(plan).width, layout(plan).height)
    # mermaid stays the default
    assert cli("graph", demo).stdout.startswith("flowchart TD\n")


@pytest.mark.slow  # two child processes
def test_cli_png_goes_to_a_pipe_but_not_to_a_terminal() -> None:
    demo = str(PIPELINES / "demo.yaml")
    command = [sys.executable, "-m", "orchestrator", "graph", demo, "--format", "png"]
    environment = {**os.environ, "PYTHONPATH": str(REPO / "shared")}
    piped = subprocess.run(command, capture_output=True, env=environment, timeout=60, check=False)
    assert piped.returncode == 0, piped.stderr
    assert Image.open(io.BytesIO(piped.stdout)).format == "PNG"
    # a terminal gets a clear error and no bytes
    leader, follower = pty.openpty()
    try:
        shown = subprocess.run(
            command, stdout=follower, stderr=subprocess.PIPE, env=environment, timeout=60, check=False
        )
        os.set_blocking(leader, False)
        try:
            written = os.read(leader, 4096)
        except BlockingIOError:
            written = b""
    finally:
        os.close(leader)
        os.close(follower)
    assert shown.returncode == 2 and written == b""
    assert b"-o FILE.png" in shown.stderr


def test_the_readme_picture_is_the_demo_as_drawn_now() -> None:
    drawn = render_svg(build_plan(read_pipeline(PIPELINES / "demo.yaml")))
    picture = REPO / "docs" / "images" / "demo-graph.svg"
    assert picture.read_text(encoding="utf-8") == drawn, (
        "run: orchestrator graph pipelines/demo.yaml --format svg -o docs/images/demo-graph.svg"
    )
    assert "](docs/images/demo-graph.svg)" in (REPO / "README.md").read_text(encoding="utf-8")


def test_layers_are_ordered_so_edges_do_not_cross(write_pipeline: Callable[..., Path]) -> None:
    # GIVEN a and b, then c reading b and d reading a: in file order the two edges cross
    path = write_pipeline(
        """
        name: crossed
        tasks:
          - {name: a, type: python_task, script: return 1}
          - {name: b, type: python_task, script: return 2}
          - {name: c, type: python_task, depends_on: [b], script: return 3}
          - {name: d, type: python_task, depends_on: [a], script: return 4}
        """
    )
    picture = layout(build_plan(read_pipeline(path)))
    # THEN the lower layer is reordered: the edges leave and arrive in the same order
    (first, second) = sorted(picture.edges, key=lambda edge: edge.points[0][0])
    assert (first.source, second.source) == ("a", "b")
    assert first.points[-1][0] < second.points[-1][0]


def test_a_huge_pipeline_makes_a_png_of_bounded_size(write_pipeline: Callable[..., Path]) -> None:
    tasks = "\n".join(
        f"  - {{name: task_{index}, type: python_task, script: return 1}}" for index in range(200)
    )
    plan = build_plan(read_pipeline(write_pipeline(f"name: wide\ntasks:\n{tasks}\n")))
    picture = layout(plan)
    assert picture.width > 16_000 / 2  # wider than the largest side at the usual two pixels per pixel
    image = Image.open(io.BytesIO(render_png(plan)))
    assert image.size == png_size(picture.width, picture.height)
    assert image.size[0] <= 16_000 and image.size[0] * image.size[1] <= 32_000_000
    for width, height in ((1e6, 300.0), (300.0, 1e6), (9e4, 9e4)):
        columns, rows = png_size(width, height)
        assert 0 < columns <= 16_000 and 0 < rows <= 16_000 and columns * rows <= 32_000_000
