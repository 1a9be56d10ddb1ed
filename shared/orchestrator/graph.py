"""Draw a plan as Mermaid or Graphviz DOT: tasks as nodes, dependencies as edges, bodies as boxes."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.plan import Body, Node, Plan
from orchestrator.spec.models import DynamicTaskGroup, PipelineGroup

_SHAPES = {"python_task": "python", "llm_task": "llm", "web_search_task": "search"}


def to_mermaid(plan: Plan) -> str:
    lines = ["flowchart TD"]

    def draw(body: Body, prefix: str, indent: str) -> None:
        for name, node in body.nodes.items():
            node_id = prefix + name
            if node.body is not None:
                lines.append(f'{indent}subgraph {node_id}["{name} ({node.kind})"]')
                draw(node.body, node_id + "__", indent + "  ")
                lines.append(f"{indent}end")
            else:
                text = f"{name}<br/><i>{_SHAPES.get(node.kind, node.kind)}</i>"
                if node.task.condition is not None:
                    lines.append(f'{indent}{node_id}{{"{text}"}}')
                else:
                    lines.append(f'{indent}{node_id}["{text}"]')
        for name, node in body.nodes.items():
            for dependency in sorted(node.dependencies):
                lines.append(f"{indent}{prefix}{dependency} --> {prefix}{name}")

    draw(plan.body, "", "  ")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    """A DOT double-quoted string that shows TEXT as written (label escapes such as \\n are escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n") + '"'


def _attributes(**values: str | None) -> str:
    """` [key="value", ...]` for the values that are set, or nothing."""
    pairs = [f"{key}={_quote(value)}" for key, value in values.items() if value is not None]
    return f" [{', '.join(pairs)}]" if pairs else ""


@dataclass
class _Ends:
    """The nodes inside a container's cluster that edges into (head) and out of (tail) it attach to."""

    head: str
    tail: str


@dataclass
class _Dot:
    lines: list[str] = field(default_factory=list)
    edges: list[str] = field(default_factory=list)

    def leaf(self, indent: str, node_id: str, label: str, **attributes: str | None) -> None:
        self.lines.append(f"{indent}{_quote(node_id)}{_attributes(label=label, **attributes)};")

    def draw_body(self, body: Body, prefix: str, indent: str) -> _Ends | None:
        """Draw BODY's nodes and clusters and queue its edges; return where edges to it attach."""
        ends: dict[str, _Ends] = {}
        containers: set[str] = set()
        for name, node in body.nodes.items():
            node_id = prefix + name
            if _is_container(node):
                ends[name] = self.draw_container(node, node_id, indent)
                containers.add(name)
            else:
                shape = "diamond" if node.task.condition is not None else None
                self.leaf(
                    indent,
                    node_id,
                    f"{name}\n{_SHAPES.get(node.kind, node.kind)}",
                    shape=shape,
                    tooltip=node.task.description,
                )
                ends[name] = _Ends(node_id, node_id)
        for name, node in body.nodes.items():
            for dependency in sorted(node.dependencies):
                source, target = ends[dependency], ends[name]
                attributes = _attributes(
                    ltail=_cluster(prefix + dependency) if dependency in containers else None,
                    lhead=_cluster(prefix + name) if name in containers else None,
                )
                self.edges.append(f"  {_quote(source.tail)} -> {_quote(target.head)}{attributes};")
        if not body.nodes:
            return None
        depended_on = {dependency for node in body.nodes.values() for dependency in node.dependencies}
        sources = [name for name, node in body.nodes.items() if not node.dependencies]
        sinks = [name for name in body.nodes if name not in depended_on]
        first = sources[0] if sources else next(iter(body.nodes))
        last = sinks[-1] if sinks else next(reversed(body.nodes))
        return _Ends(ends[first].head, ends[last].tail)

    def draw_container(self, node: Node, node_id: str, indent: str) -> _Ends:
        task = node.task
        title = f"{node.name} ({node.kind}"
        if isinstance(task, PipelineGroup):
            title += f", {task.mode}"
        self.lines.append(f"{indent}subgraph {_quote(_cluster(node_id))} {{")
        inner = indent + "  "
        self.lines.append(f"{inner}label={_quote(title + ')')};")
        if task.description is not None:
            self.lines.append(f"{inner}tooltip={_quote(task.description)};")
        ends: _Ends | None = None
        if node.body is not None:
            ends = self.draw_body(node.body, node_id + "__", inner)
        elif isinstance(task, PipelineGroup) and task.pipelines:
            children = [f"{node_id}::pipeline_{index}" for index in range(len(task.pipelines))]
            for child_id, child in zip(children, task.pipelines, strict=True):
                self.leaf(inner, child_id, f"{child.pipeline}\npipeline", shape="component")
            ends = _Ends(children[0], children[-1])
        elif isinstance(task, DynamicTaskGroup):
            anchor = f"{node_id}::tasks"
            text = "tasks made at run time" if isinstance(task.tasks, str) else f"{len(task.tasks)} task(s)"
            self.leaf(inner, anchor, text, shape="note", style="dashed")
            ends = _Ends(anchor, anchor)
        if ends is None:  # nothing inside: an invisible point for edges to attach to
            anchor = f"{node_id}::anchor"
            self.leaf(inner, anchor, "", shape="point", style="invis")
            ends = _Ends(anchor, anchor)
        self.lines.append(f"{indent}}}")
        return ends


def _is_container(node: Node) -> bool:
    return node.body is not None or isinstance(node.task, DynamicTaskGroup | PipelineGroup)


def _cluster(node_id: str) -> str:
    return f"cluster_{node_id}"


def to_dot(plan: Plan) -> str:
    """Graphviz DOT: containers are clusters, and an edge to or from one is clipped at its border."""
    dot = _Dot(
        [
            f"digraph {_quote(plan.pipeline_id)} {{",
            "  compound=true;",
            "  rankdir=TB;",
            "  node [shape=box, style=rounded];",
        ]
    )
    dot.draw_body(plan.body, "", "  ")
    return "\n".join([*dot.lines, *dot.edges, "}"]) + "\n"
