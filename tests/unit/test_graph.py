"""`orchestrator graph --format dot`: an edge to or from a loop or group attaches to it as a whole.

The DOT text is read back with a few regular expressions (no Graphviz needed): clusters nest by
their braces, and an edge's `lhead` / `ltail` name the container it really enters or leaves.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import PIPELINES, CliResult
from orchestrator.graph import to_dot, to_mermaid
from orchestrator.plan import Plan, build_plan
from orchestrator.spec.loading import read_pipeline

Cli = Callable[..., CliResult]

_STRING = r'"((?:[^"\\]|\\.)*)"'
_HEADER = re.compile(rf"digraph {_STRING} \{{")
_CLUSTER = re.compile(rf"subgraph {_STRING} \{{")
_SETTING = re.compile(rf"(?:label|tooltip)={_STRING};")
_ATTRIBUTES = rf"(?: \[\w+={_STRING}(?:, \w+={_STRING})*\])?"
_NODE = re.compile(rf"{_STRING}(?P<attributes>{_ATTRIBUTES});")
_EDGE = re.compile(rf"{_STRING} -> {_STRING}(?P<attributes>{_ATTRIBUTES});")
_ATTRIBUTE = re.compile(rf"(\w+)={_STRING}")
_FIXED = {"compound=true;", "rankdir=TB;", "node [shape=box, style=rounded];", "}"}


def _unquote(text: str) -> str:
    """The text a DOT string shows: `\\n` is a line break, `\\"` and `\\\\` stand for themselves."""
    return re.sub(r"\\(.)", lambda match: "\n" if match.group(1) == "n" else match.group(1), text)


@dataclass
class Dot:
    """What a DOT text says: each node's and cluster's enclosing cluster, and each edge."""

    name: str = ""
    parents: dict[str, str | None] = field(default_factory=dict)  # node or cluster -> cluster
    labels: dict[str, str] = field(default_factory=dict)  # node or cluster -> its label
    edges: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def inside(self, node: str, cluster: str) -> bool:
        parent = self.parents[node]
        while parent is not None:
            if parent == cluster:
                return True
            parent = self.parents[parent]
        return False

    def item_edges(self) -> set[tuple[str, str]]:
        """Edges between plan items: a cluster named in ltail/lhead stands for its container."""
        items: set[tuple[str, str]] = set()
        for tail, head, attributes in self.edges:
            source = self._item(tail, attributes.get("ltail"))
            target = self._item(head, attributes.get("lhead"))
            # an edge joins two siblings: nothing reaches into a container without naming it
            assert self._parent(source) == self._parent(target), (tail, head)
            items.add((source, target))
        return items

    def _parent(self, item: str) -> str | None:
        return self.parents[item] if item in self.parents else self.parents[f"cluster_{item}"]

    def _item(self, node: str, cluster: str | None) -> str:
        if cluster is None:
            assert f"cluster_{node}" not in self.parents
            return node
        assert cluster.startswith("cluster_") and self.inside(node, cluster), (node, cluster)
        return cluster.removeprefix("cluster_")


def parse_dot(text: str) -> Dot:
    dot = Dot()
    lines = text.splitlines()
    header = _HEADER.fullmatch(lines[0])
    assert header, lines[0]
    dot.name = _unquote(header.group(1))
    assert lines[-1] == "}"
    stack: list[str] = []
    for raw in lines[1:-1]:
        line = raw.strip()
        if match := _CLUSTER.fullmatch(line):
            cluster = _unquote(match.group(1))
            assert cluster.startswith("cluster_") and cluster not in dot.parents
            dot.parents[cluster] = stack[-1] if stack else None
            stack.append(cluster)
        elif line == "}":
            assert stack, "unbalanced braces"
            stack.pop()
        elif match := _EDGE.fullmatch(line):
            attributes = {
                key: _unquote(value) for key, value in _ATTRIBUTE.findall(match.group("attributes"))
            }
            dot.edges.append((_unquote(match.group(1)), _unquote(match.group(2)), attributes))
        elif match := _NODE.fullmatch(line):
            node = _unquote(match.group(1))
            assert node not in dot.parents, f"node {node} drawn twice"
            dot.parents[node] = stack[-1] if stack else None
            attributes = dict(_ATTRIBUTE.findall(match.group("attributes")))
            dot.labels[node] = _unquote(attributes.get("label", ""))
        elif match := _SETTING.fullmatch(line):
            assert stack, line
            if line.startswith("label="):
                dot.labels[stack[-1]] = _unquote(match.group(1))
        else:
            assert line in _FIXED, f"not DOT this module writes: {raw!r}"
    assert not stack, "unbalanced braces"
    for tail, head, _ in dot.edges:
        assert tail in dot.parents and head in dot.parents, (tail, head)
    return dot


def mermaid_item_edges(text: str) -> set[tuple[str, str]]:
    edges = set()
    for line in text.splitlines():
        if match := re.fullmatch(r"\s*(\w+) --> (\w+)", line):
            edges.add((match.group(1), match.group(2)))
    return edges


def mermaid_top_level(text: str) -> set[str]:
    items, depth = set(), 0
    for line in text.splitlines()[1:]:
        stripped = line.strip()
        if stripped == "end":
            depth -= 1
        elif match := re.match(r"subgraph (\w+)\[", stripped):
            if depth == 0:
                items.add(match.group(1))
            depth += 1
        elif (match := re.match(r"(\w+)[\[{]", stripped)) and depth == 0:
            items.add(match.group(1))
    return items


def plan_of(write_pipeline: Callable[..., Path], text: str, name: str = "pipeline") -> Plan:
    return build_plan(read_pipeline(write_pipeline(text, name)))


def test_an_edge_to_or_from_a_group_attaches_to_the_whole_group(
    write_pipeline: Callable[..., Path],
) -> None:
    # GIVEN a -> parallel_group g (x, y) -> b
    plan = plan_of(
        write_pipeline,
        """
        name: p
        tasks:
          - name: a
            type: python_task
            script: return 1
          - name: g
            type: parallel_group
            depends_on: [a]
            tasks:
              - name: x
                type: python_task
                script: return 2
              - name: y
                type: python_task
                script: return 3
          - name: b
            type: python_task
            depends_on: [g]
            script: return 4
        """,
    )
    # WHEN it is drawn as DOT
    text = to_dot(plan)
    dot = parse_dot(text)
    # THEN the graph is compound and g is a cluster holding x and y
    assert "  compound=true;\n" in text
    assert dot.parents["cluster_g"] is None
    assert dot.inside("g__x", "cluster_g") and dot.inside("g__y", "cluster_g")
    # AND a enters g as a whole, and b leaves it as a whole
    into = [(head, attrs) for tail, head, attrs in dot.edges if tail == "a"]
    assert len(into) == 1
    head, attributes = into[0]
    assert attributes == {"lhead": "cluster_g"} and dot.inside(head, "cluster_g")
    out_of = [(tail, attrs) for tail, head, attrs in dot.edges if head == "b"]
    assert len(out_of) == 1
    tail, attributes = out_of[0]
    assert attributes == {"ltail": "cluster_g"} and dot.inside(tail, "cluster_g")
    # AND nothing goes from a straight to x or y
    assert not [edge for edge in dot.edges if edge[0] == "a" and edge[1] in {"g__x", "g__y"} and not edge[2]]
    assert dot.item_edges() == {("a", "g"), ("g", "b")} == mermaid_item_edges(to_mermaid(plan))


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.yaml")), ids=lambda path: path.stem)
def test_dot_and_mermaid_draw_the_same_edges_for_bundled_pipelines(path: Path) -> None:
    plan = build_plan(read_pipeline(path))
    mermaid = to_mermaid(plan)
    dot = parse_dot(to_dot(plan))
    top_level = mermaid_top_level(mermaid)
    assert top_level == {name.removeprefix("cluster_") for name, p in dot.parents.items() if p is None}
    dot_edges, mermaid_edges = dot.item_edges(), mermaid_item_edges(mermaid)
    on_top = {(source, target) for source, target in dot_edges if {source, target} <= top_level}
    assert on_top == {edge for edge in mermaid_edges if set(edge) <= top_level}
    # the edges inside loops and groups agree too
    assert dot_edges == mermaid_edges


def test_bundled_pipelines_have_edges_into_and_out_of_containers() -> None:
    attributes = set()
    for path in PIPELINES.glob("*.yaml"):
        for _, _, edge_attributes in parse_dot(to_dot(build_plan(read_pipeline(path)))).edges:
            attributes |= set(edge_attributes)
    assert attributes == {"lhead", "ltail"}


def test_a_loop_inside_a_group_inside_a_loop(write_pipeline: Callable[..., Path]) -> None:
    plan = plan_of(
        write_pipeline,
        """
        name: nested
        tasks:
          - name: start
            type: python_task
            script: return [1, 2]
          - name: outer
            type: for_loop
            iterate_over: "{{ start }}"
            tasks:
              - name: prepare
                type: python_task
                script: return 1
              - name: grp
                type: parallel_group
                depends_on: [prepare]
                tasks:
                  - name: inner
                    type: while_loop
                    condition: "{{ false }}"
                    max_iterations: 2
                    tasks:
                      - name: step
                        type: python_task
                        script: return 1
                      - name: check
                        type: python_task
                        depends_on: [step]
                        script: return 2
                  - name: side
                    type: python_task
                    script: return 3
              - name: after
                type: python_task
                depends_on: [grp]
                script: return 4
          - name: finish
            type: python_task
            depends_on: [outer]
            script: return 5
        """,
    )
    dot = parse_dot(to_dot(plan))
    assert dot.parents["cluster_outer"] is None
    assert dot.parents["cluster_outer__grp"] == "cluster_outer"
    assert dot.parents["cluster_outer__grp__inner"] == "cluster_outer__grp"
    assert dot.parents["outer__grp__inner__step"] == "cluster_outer__grp__inner"
    assert dot.labels["cluster_outer__grp__inner"] == "inner (while_loop)"
    assert dot.item_edges() == {
        ("start", "outer"),
        ("outer", "finish"),
        ("outer__prepare", "outer__grp"),
        ("outer__grp", "outer__after"),
        ("outer__grp__inner__step", "outer__grp__inner__check"),
    }
    assert dot.item_edges() == mermaid_item_edges(to_mermaid(plan))
    # entering the outer loop lands on its first task; leaving it starts from its last
    edges = {(tail, head): attributes for tail, head, attributes in dot.edges}
    assert edges[("start", "outer__prepare")] == {"lhead": "cluster_outer"}
    assert edges[("outer__after", "finish")] == {"ltail": "cluster_outer"}
    # a group entered from a sibling: the head is inside the nested loop, clipped at the group
    (grp_head,) = [head for tail, head in edges if tail == "outer__prepare"]
    assert dot.inside(grp_head, "cluster_outer__grp")


def test_an_empty_dynamic_task_group_has_a_node_to_attach_edges_to(
    write_pipeline: Callable[..., Path],
) -> None:
    plan = plan_of(
        write_pipeline,
        """
        name: dynamic
        tasks:
          - name: make
            type: python_task
            script: |
              return [{"name": "t", "type": "python_task", "script": "return 1"}]
          - name: run_them
            type: dynamic_task_group
            tasks: "{{ make }}"
          - name: report
            type: python_task
            depends_on: [run_them]
            script: return 1
        """,
    )
    dot = parse_dot(to_dot(plan))
    (placeholder,) = [node for node, parent in dot.parents.items() if parent == "cluster_run_them"]
    assert dot.labels["cluster_run_them"] == "run_them (dynamic_task_group)"
    assert dot.edges == [
        ("make", placeholder, {"lhead": "cluster_run_them"}),
        (placeholder, "report", {"ltail": "cluster_run_them"}),
    ]
    assert dot.item_edges() == mermaid_item_edges(to_mermaid(plan))


def test_empty_groups_pipeline_groups_and_quotes(write_pipeline: Callable[..., Path]) -> None:
    plan = plan_of(
        write_pipeline,
        r"""
        name: quotes
        tasks:
          - name: a
            type: python_task
            description: 'says "hi" \n and \ goes'
            script: return 1
          - name: empty
            type: parallel_group
            depends_on: [a]
            tasks: []
          - name: children
            type: pipeline_group
            mode: sequential
            description: 'a "group" }; digraph {'
            depends_on: [empty]
            pipelines:
              - pipeline: 'one "quoted".yaml'
              - pipeline: 'two\three.yaml'
        """,
        name='we "ird" \\ name',
    )
    text = to_dot(plan)
    dot = parse_dot(text)  # every line is well-formed: quotes and backslashes are escaped
    assert dot.name == 'we "ird" \\ name'
    assert 'tooltip="says \\"hi\\" \\\\n and \\\\ goes"' in text
    assert dot.labels["cluster_children"] == "children (pipeline_group, sequential)"
    pipelines = [node for node, parent in dot.parents.items() if parent == "cluster_children"]
    assert [dot.labels[node] for node in pipelines] == [
        'one "quoted".yaml\npipeline',
        "two\\three.yaml\npipeline",
    ]
    (anchor,) = [node for node, parent in dot.parents.items() if parent == "cluster_empty"]
    assert ("a", anchor, {"lhead": "cluster_empty"}) in dot.edges
    assert (anchor, pipelines[0], {"ltail": "cluster_empty", "lhead": "cluster_children"}) in dot.edges
    assert dot.item_edges() == {("a", "empty"), ("empty", "children")}
    assert dot.item_edges() == mermaid_item_edges(to_mermaid(plan))


def test_cli_graph_dot(cli: Cli, write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(
        """
        name: c
        tasks:
          - name: a
            type: python_task
            script: return 1
          - name: loop
            type: for_loop
            iterate_over: "{{ a }}"
            tasks:
              - name: body
                type: python_task
                script: return 2
        """
    )
    result = cli("graph", path, "--format", "dot")
    assert result.code == 0, result.stderr
    dot = parse_dot(result.stdout)
    assert dot.name == "pipeline"
    assert dot.edges == [("a", "loop__body", {"lhead": "cluster_loop"})]
