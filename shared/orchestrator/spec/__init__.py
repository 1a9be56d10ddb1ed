"""The pipeline file: pydantic models, YAML loading with positions, validation and JSON Schema."""
