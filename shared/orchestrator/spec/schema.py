"""The JSON Schema of a pipeline file, for editors (yaml-language-server, VS Code)."""

from __future__ import annotations

from typing import Any

from orchestrator.spec.models import Pipeline


def pipeline_json_schema() -> dict[str, Any]:
    schema = Pipeline.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Orchestrator pipeline"
    return schema
