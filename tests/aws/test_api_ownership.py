"""Issue 13, the AWS side: runs belong to their caller.

Every request goes through `functions/api/app.py`'s handler as API Gateway (HTTP API, payload
2.0) delivers it behind the stack's IAM authorizer: the caller is in
`requestContext.authorizer.iam` (`tests/events/apigw_http_list_runs_iam.json`, the shape AWS
sends for a SigV4-signed request of an assumed role). Executions start in moto's Step
Functions and owner records go to a runs table made from the template's own definition.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

Handler = Callable[[str, dict[str, Any]], Any]
Event = Callable[[str], dict[str, Any]]
Machines = Callable[..., dict[str, str]]

ALICE = "arn:aws:sts::123456789012:assumed-role/pipeline-users/alice"
BOB = "arn:aws:sts::123456789012:assumed-role/pipeline-users/bob"


def iam(event: Event, caller: str | None) -> dict[str, Any]:
    """The IAM authorizer's block for `caller` (None: a request with no identity at all)."""
    block: dict[str, Any] = copy.deepcopy(event("apigw_http_list_runs_iam")["requestContext"]["authorizer"])
    if caller is None:
        return {}
    session = caller.rsplit("/", 1)[-1]
    block["iam"].update({"userArn": caller, "callerId": f"AROA2XJQ3V5EXAMPLEAB:{session}"})
    return block


def post(
    event: Event, caller: str | None, pipeline: str, body: Any, key: str | None = None
) -> dict[str, Any]:
    request = event("apigw_http_post_run")
    request["rawPath"] = request["requestContext"]["http"]["path"] = f"/pipelines/{pipeline}/runs"
    request["pathParameters"] = {"id": pipeline}
    request["body"] = json.dumps(body)
    request["requestContext"]["authorizer"] = iam(event, caller)
    if key is None:
        del request["headers"]["idempotency-key"]
    else:
        request["headers"]["idempotency-key"] = key
    return request


def get(event: Event, caller: str | None, run_id: str) -> dict[str, Any]:
    request = event("apigw_http_get_run")
    request["rawPath"] = request["requestContext"]["http"]["path"] = f"/runs/{run_id}"
    request["pathParameters"] = {"run_id": run_id}
    request["requestContext"]["authorizer"] = iam(event, caller)
    return request


def listing(event: Event, caller: str | None, limit: str = "100") -> dict[str, Any]:
    request = event("apigw_http_list_runs_iam")
    request["rawQueryString"] = f"limit={limit}"
    request["queryStringParameters"] = {"limit": limit}
    request["requestContext"]["authorizer"] = iam(event, caller)
    return request


def body_of(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


def listed(handler: Handler, event: Event, caller: str) -> list[str]:
    response = handler("api", listing(event, caller))
    assert response["statusCode"] == 200, response
    return [run["run_id"] for run in body_of(response)["runs"]]


def execution_inputs(sfn: Any, arn: str) -> dict[str, dict[str, Any]]:
    """Each execution's input, by run id."""
    found = {}
    for execution in sfn.list_executions(stateMachineArn=arn)["executions"]:
        found[execution["name"]] = json.loads(
            sfn.describe_execution(executionArn=execution["executionArn"])["input"]
        )
    return found


# -- reading -----------------------------------------------------------------------------------


def test_a_run_is_read_only_by_the_caller_who_started_it(
    handler: Handler, event: Event, state_machines: Machines
) -> None:
    # GIVEN a run alice started
    state_machines("demo")
    started = handler("api", post(event, ALICE, "demo", {"inputs": {"topic": "alice's"}}))
    assert started["statusCode"] == 202, started
    run_id = body_of(started)["run_id"]
    # WHEN alice and bob read it
    mine = handler("api", get(event, ALICE, run_id))
    theirs = handler("api", get(event, BOB, run_id))
    missing = handler("api", get(event, BOB, "demo-20200101T000000-deadbeef"))
    # THEN alice sees it, and bob gets exactly what a run that does not exist gives (no 403)
    assert mine["statusCode"] == 200 and body_of(mine)["run_id"] == run_id
    assert theirs["statusCode"] == missing["statusCode"] == 404
    assert body_of(theirs) == {"error": f"no run '{run_id}'"}
    assert body_of(missing) == {"error": "no run 'demo-20200101T000000-deadbeef'"}


def test_listing_returns_only_the_callers_runs_newest_first(
    handler: Handler, event: Event, state_machines: Machines
) -> None:
    state_machines("demo", "input_validation")
    alice = [body_of(handler("api", post(event, ALICE, "demo", {})))["run_id"] for _ in range(3)]
    bob = [body_of(handler("api", post(event, BOB, "demo", {})))["run_id"]]
    assert listed(handler, event, ALICE) == alice[::-1]
    assert listed(handler, event, BOB) == bob
    response = handler("api", listing(event, ALICE, limit="2"))
    assert [run["run_id"] for run in body_of(response)["runs"]] == alice[:0:-1]
    assert {run["status"] for run in body_of(response)["runs"]} == {"running"}
    for limit in ("0", "101", "two", "-1"):
        refused = handler("api", listing(event, ALICE, limit=limit))
        assert refused["statusCode"] == 400 and "limit must be a whole number" in body_of(refused)["error"]


def test_runs_of_uploads_and_schedules_belong_to_the_stack(
    handler: Handler, event: Event, state_machines: Machines, sfn: Any, pipelines_dir: Path
) -> None:
    # GIVEN a run started by an upload and one by a schedule
    (pipelines_dir / "uploads.yaml").write_text(
        "name: uploads\ntriggers: {s3: {prefix: incoming/, suffix: .csv}}\n"
        "input_variables: {bucket: {type: string}, key: {type: string}, size: {type: integer},"
        " etag: {type: string}}\ntasks:\n  - {name: a, type: python_task, script: return 1}\n",
        encoding="utf-8",
    )
    (pipelines_dir / "demo.yaml").write_text(
        (Path(__file__).resolve().parents[2] / "pipelines" / "demo.yaml").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    state_machines("uploads", "demo")
    upload = handler("upload_trigger", event("s3_object_created"))["runs"][0]["run_id"]
    scheduled = handler("schedule_trigger", event("scheduler_target_input"))["run_id"]
    # WHEN API callers ask for them THEN nobody reads them through the API, nor lists them
    for caller in (ALICE, BOB):
        for run_id in (upload, scheduled):
            assert handler("api", get(event, caller, run_id))["statusCode"] == 404
        assert listed(handler, event, caller) == []


def test_a_request_without_a_caller_identity_is_refused(
    handler: Handler, event: Event, state_machines: Machines, sfn: Any
) -> None:
    arns = state_machines("demo")
    run_id = body_of(handler("api", post(event, ALICE, "demo", {})))["run_id"]
    for request in (post(event, None, "demo", {}), get(event, None, run_id), listing(event, None)):
        response = handler("api", request)
        assert response["statusCode"] == 403 and "no caller identity" in body_of(response)["error"]
    assert len(sfn.list_executions(stateMachineArn=arns["demo"])["executions"]) == 1


# -- idempotency keys --------------------------------------------------------------------------


def test_a_second_caller_reusing_a_key_gets_a_run_of_its_own(
    handler: Handler, event: Event, state_machines: Machines, sfn: Any
) -> None:
    arns = state_machines("demo")
    # GIVEN alice's run with the key order-42
    first = handler("api", post(event, ALICE, "demo", {"inputs": {"topic": "alice's"}}, key="order-42"))
    # WHEN bob sends the same key with other inputs
    second = handler("api", post(event, BOB, "demo", {"inputs": {"topic": "bob's"}}, key="order-42"))
    # THEN bob's run is new and his own; alice's run and its inputs are untouched
    assert (first["statusCode"], second["statusCode"]) == (202, 202)
    alice_run, bob_run = body_of(first)["run_id"], body_of(second)["run_id"]
    assert alice_run != bob_run
    inputs = execution_inputs(sfn, arns["demo"])
    assert inputs[alice_run]["inputs"]["topic"] == "alice's" and inputs[alice_run]["run"]["owner"] == ALICE
    assert inputs[bob_run]["inputs"]["topic"] == "bob's" and inputs[bob_run]["run"]["owner"] == BOB
    assert handler("api", get(event, BOB, alice_run))["statusCode"] == 404
    assert handler("api", get(event, ALICE, bob_run))["statusCode"] == 404


def test_the_same_caller_reusing_a_key_with_another_request_is_a_conflict(
    handler: Handler, event: Event, state_machines: Machines, sfn: Any
) -> None:
    arns = state_machines("demo", "secure_credentials")
    # GIVEN alice's keyed run
    first = handler("api", post(event, ALICE, "demo", {"inputs": {"topic": "a"}}, key="k-1"))
    run_id = body_of(first)["run_id"]
    # WHEN she sends the same request again THEN she gets that run (200)
    again = handler("api", post(event, ALICE, "demo", {"inputs": {"topic": "a"}}, key="k-1"))
    assert again["statusCode"] == 200 and body_of(again)["run_id"] == run_id
    # WHEN she sends the key with other inputs, or other options THEN it is a 409 naming the run
    for body in ({"inputs": {"topic": "b"}}, {"inputs": {"topic": "a"}, "no_cache": True}):
        conflict = handler("api", post(event, ALICE, "demo", body, key="k-1"))
        assert conflict["statusCode"] == 409, conflict
        message = body_of(conflict)["error"]
        assert "Idempotency-Key" in message and run_id in message and "new key" in message
    assert len(sfn.list_executions(stateMachineArn=arns["demo"])["executions"]) == 1
    # AND a conflict over sensitive inputs never echoes them
    secrets = {"api_key": "sk-live-first-0001", "database_password": "hunter2-hunter2"}
    handler("api", post(event, ALICE, "secure_credentials", {"inputs": secrets}, key="k-2"))
    changed = {**secrets, "api_key": "sk-live-second-0002"}
    conflict = handler("api", post(event, ALICE, "secure_credentials", {"inputs": changed}, key="k-2"))
    assert conflict["statusCode"] == 409
    assert not any(value in conflict["body"] for value in (*secrets.values(), changed["api_key"]))


# -- the rule, over any sequence of requests ---------------------------------------------------

CALLERS = ("alice", "bob", "carol")
OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["post", "get", "list"]),
        st.integers(0, len(CALLERS) - 1),
        st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
        st.sampled_from(["x", "y"]),
        st.integers(0, 20),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
def test_ownership_holds_for_any_sequence_of_requests(
    handler: Handler,
    event: Event,
    state_machines: Machines,
    operations: list[tuple[str, int, str | None, str, int]],
) -> None:
    """A model of the rule: a caller reads and lists exactly the runs it started; a key is its
    own (another caller's use of it starts another run); its key with the same request is the
    same run, with another request a 409."""
    state_machines("demo")
    namespace = uuid.uuid4().hex[:8]  # this example's callers, apart from earlier examples'
    callers = [
        f"arn:aws:sts::123456789012:assumed-role/pipeline-users/{name}-{namespace}" for name in CALLERS
    ]
    keyed: dict[tuple[str, str], tuple[str, str]] = {}  # (caller, key) -> (topic, run id)
    owned: dict[str, list[str]] = {caller: [] for caller in callers}
    every: list[str] = []
    for operation, who, key, topic, pick in operations:
        caller = callers[who]
        if operation == "post":
            response = handler("api", post(event, caller, "demo", {"inputs": {"topic": topic}}, key=key))
            earlier = keyed.get((caller, key)) if key is not None else None
            if earlier is None:
                assert response["statusCode"] == 202, response
                run_id = body_of(response)["run_id"]
                assert run_id not in every
                owned[caller].append(run_id)
                every.append(run_id)
                if key is not None:
                    keyed[(caller, key)] = (topic, run_id)
            elif earlier[0] == topic:
                assert response["statusCode"] == 200 and body_of(response)["run_id"] == earlier[1]
            else:
                assert response["statusCode"] == 409, response
        elif operation == "get" and every:
            run_id = every[pick % len(every)]
            response = handler("api", get(event, caller, run_id))
            assert response["statusCode"] == (200 if run_id in owned[caller] else 404)
        elif operation == "list":
            assert sorted(listed(handler, event, caller)) == sorted(owned[caller])
