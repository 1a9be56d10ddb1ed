"""The repair loop of typed output (`runtime.llm.complete_with_schema`) over drawn schemas and
replies, with an in-process client: what the validator accepts is the output unchanged, what
it rejects never becomes output; and the schema checks of `spec.output_schema`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from orchestrator.errors import TaskError
from orchestrator.runtime.llm import LLMReply, LLMRequest, complete_with_schema
from orchestrator.spec.output_schema import schema_problem, validation_problem

PROPERTY = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@dataclass
class Scripted:
    """An `LLMClient` answering from a list, recording every request."""

    replies: list[str]
    requests: list[LLMRequest] = field(default_factory=list)

    def complete(self, request: LLMRequest) -> LLMReply:
        self.requests.append(request)
        return LLMReply(self.replies[len(self.requests) - 1])


TYPES = st.sampled_from(["string", "integer", "number", "boolean", "null", "array", "object"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(
    scalars | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("abcd"), inner, max_size=4),
    max_leaves=12,
)
leaf_schemas = st.one_of(
    TYPES.map(lambda kind: {"type": kind}),
    st.lists(scalars | st.text(max_size=3), min_size=1, max_size=3).map(lambda options: {"enum": options}),
    st.integers(-5, 5).map(lambda low: {"type": "integer", "minimum": low}),
    st.integers(0, 3).map(lambda most: {"type": "string", "maxLength": most}),
)
schemas = st.recursive(
    leaf_schemas,
    lambda inner: st.one_of(
        st.builds(
            lambda properties, required, closed: {
                "type": "object",
                "properties": properties,
                "required": sorted(set(required) & set(properties)),
                "additionalProperties": not closed,
            },
            st.dictionaries(st.sampled_from("abcd"), inner, max_size=3),
            st.lists(st.sampled_from("abcd"), max_size=3),
            st.booleans(),
        ),
        st.builds(
            lambda items, most: {"type": "array", "items": items, "maxItems": most}, inner, st.integers(0, 3)
        ),
        st.lists(inner, min_size=1, max_size=2).map(lambda options: {"anyOf": options}),
    ),
    max_leaves=6,
)


@PROPERTY
@given(schema=schemas, value=json_values, retries=st.integers(0, 2))
def test_a_value_the_validator_accepts_is_the_output_unchanged_and_one_it_rejects_never_is(
    schema: dict[str, Any], value: Any, retries: int
) -> None:
    assert schema_problem(schema) is None
    client = Scripted([json.dumps(value)] * (retries + 1))
    request = LLMRequest(model="m", prompt="p")
    if Draft202012Validator(schema).is_valid(value):
        output = complete_with_schema(client, request, schema, retries=retries, structured=False)
        assert json.dumps(output) == json.dumps(value)
        assert len(client.requests) == 1
    else:
        with pytest.raises(TaskError) as raised:
            complete_with_schema(client, request, schema, retries=retries, structured=False)
        assert raised.value.error_type == "OutputValidationError"
        assert len(client.requests) == retries + 1
        # every try after the first carries every reply so far, each followed by its problem
        last = client.requests[-1]
        assert [role for role, _ in last.turns] == ["assistant", "user"] * retries


@PROPERTY
@given(
    schema=schemas,
    replies=st.lists(st.text(max_size=30) | json_values.map(json.dumps), min_size=3, max_size=3),
)
def test_any_reply_text_gives_a_valid_value_or_output_validation_error(
    schema: dict[str, Any], replies: list[str]
) -> None:
    client = Scripted(replies)
    try:
        output = complete_with_schema(
            client, LLMRequest(model="m", prompt="p"), schema, retries=2, structured=True
        )
    except TaskError as error:
        assert error.error_type == "OutputValidationError"
        assert len(client.requests) == 3
    else:
        assert Draft202012Validator(schema).is_valid(output)
        assert validation_problem(output, schema) is None
    assert all(request.response_schema == schema for request in client.requests)
    assert all(request.prompt == "p" for request in client.requests)  # structured: prompt as written


@pytest.mark.parametrize(
    ("schema", "where", "says"),
    [
        ({"type": "objet"}, ("type",), "did you mean 'object'?"),
        (
            {"properties": {"a": {"type": ["string", 3]}}},
            ("properties", "a", "type"),
            "not a valid JSON Schema",
        ),
        ({"$schema": 7}, ("$schema",), "must be the URI"),
        ({"$schema": "https://example.com/s"}, ("$schema",), "unknown JSON Schema dialect"),
        ("schema.json", (), "a JSON Schema is a mapping"),
        (
            {"$schema": "http://json-schema.org/draft-04/schema#", "exclusiveMinimum": 3},
            ("exclusiveMinimum",),
            "not of type 'boolean'",
        ),
    ],
)
def test_schema_problem_says_where_and_why(schema: Any, where: tuple[str, ...], says: str) -> None:
    found = schema_problem(schema)
    assert found is not None
    assert found[0] == where
    assert says in found[1]


def test_the_dialect_named_by_schema_is_the_one_used() -> None:
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "integer"}]}
    assert schema_problem(draft7) is None
    assert validation_problem([1, "x"], draft7) is None  # draft 7 tuple items: the rest is free
    assert validation_problem(["x"], draft7) is not None


def test_a_ref_outside_the_schema_is_a_problem_not_a_fetch() -> None:
    problem = validation_problem(1, {"$ref": "https://example.com/remote.json"})
    assert problem is not None and "cannot be resolved" in problem
