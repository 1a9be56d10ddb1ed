"""Draw a plan as Mermaid or Graphviz DOT: tasks as nodes, dependencies as edges, bodies as boxes."""

from __future__ import annotations

from orchestrator.plan import Body, Plan

_SHAPES = {"python_task": "python", "llm_task": "llm", "web_search_task": "search"}


def _label(name: str, kind: str) -> str:
    return f"{name}\\n{_SHAPES.get(kind, kind)}"


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


def to_dot(plan: Plan) -> str:
    lines = [
        f'digraph "{plan.pipeline_id}" {{',
        "  rankdir=TB;",
        "  node [shape=box, style=rounded];",
    ]

    def first_leaf(body: Body, prefix: str) -> str:
        name, node = next(iter(body.nodes.items()))
        return first_leaf(node.body, prefix + name + "__") if node.body and node.body.nodes else prefix + name

    def draw(body: Body, prefix: str, indent: str) -> None:
        for name, node in body.nodes.items():
            node_id = prefix + name
            if node.body is not None and node.body.nodes:
                lines.append(f"{indent}subgraph cluster_{node_id} {{")
                lines.append(f'{indent}  label="{name} ({node.kind})";')
                draw(node.body, node_id + "__", indent + "  ")
                lines.append(f"{indent}}}")
            else:
                shape = ", shape=diamond" if node.task.condition is not None else ""
                lines.append(f'{indent}"{node_id}" [label="{_label(name, node.kind)}"{shape}];')
        for name, node in body.nodes.items():
            target = (
                first_leaf(node.body, prefix + name + "__")
                if node.body and node.body.nodes
                else prefix + name
            )
            for dependency in sorted(node.dependencies):
                source_node = body.nodes[dependency]
                source = (
                    first_leaf(source_node.body, prefix + dependency + "__")
                    if source_node.body and source_node.body.nodes
                    else prefix + dependency
                )
                lines.append(f'{indent}"{source}" -> "{target}";')

    draw(plan.body, "", "  ")
    lines.append("}")
    return "\n".join(lines) + "\n"
