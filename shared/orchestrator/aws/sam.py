"""The SAM template: hand-written infrastructure merged with one state machine per pipeline.

`infra/template.base.yaml` holds everything written by hand (the layer, the functions, the
tables, the bucket, the HTTP API, the triggers, the log groups). `build_template` adds what
the pipelines decide: a state machine per pipeline (named `<stack>-<pipeline id>`), an
EventBridge Scheduler schedule per `triggers.schedule` entry, the trigger functions'
`ORCHESTRATOR_STATE_MACHINES` map, and a variant of a task function for each size the tasks'
`resource_limits` and timeouts ask for (`aws.functions`: which function runs which task),
and the python task function's permission to read exactly the secrets the pipelines name
(`secrets_policy`). With a deploy config (`infra/config.yaml`, shipped in the layer) every
function's `ORCHESTRATOR_CONFIG` names it, and the llm_task and web_search_task functions may
read exactly the secrets it names as their keys (`add_deploy_config`). Everything here is
pure: the caller (`aws.build`) reads and writes the files.

CloudFormation's short-form tags (`!Ref`, `!GetAtt`, `!Sub`, `!If`, ...) are kept as small
classes, so the written `template.yaml` reads like a hand-written one and a test can inspect
the template as plain data.

Examples
--------
>>> template = load_template("Value: !GetAtt PythonTaskFunction.Arn")
>>> template["Value"]
GetAtt(target='PythonTaskFunction.Arn')
>>> dump_template(template)
'Value: !GetAtt PythonTaskFunction.Arn\\n'
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from orchestrator.aws.asl import PAYLOAD_BUCKET
from orchestrator.aws.functions import (
    FunctionSize,
    FunctionVariant,
    deployed_pipelines,
    function_variants,
    generated_task_sizes,
    named_functions,
    placeholder,
)
from orchestrator.errors import OrchestratorError
from orchestrator.plan import Plan
from orchestrator.spec.models import Pipeline, Schedule

# Functions every state machine may call, by logical id; `${<id>Arn}` is their ASL placeholder.
# (Variants of the task functions, `aws.functions`, are added for the machines that call them.)
SUBSTITUTED_FUNCTIONS = ("PythonTaskFunction", "LlmTaskFunction", "WebSearchTaskFunction", "DispatchFunction")
# Functions that start executions; they get `ORCHESTRATOR_STATE_MACHINES` (pipeline id -> ARN).
TRIGGER_FUNCTIONS = ("ApiFunction", "UploadTriggerFunction", "ScheduleTriggerFunction")
STATE_MACHINES_VARIABLE = "ORCHESTRATOR_STATE_MACHINES"
# Lambda allows 4 KB of environment per function; the global variables take about 650 bytes.
STATE_MACHINES_BUDGET = 3350
# For that estimate: an ARN in the longest commercial region, under a 24-character stack name.
_ARN_ESTIMATE = len("arn:aws:states:ap-southeast-2:123456789012:stateMachine:") + 24 + 1
SCHEDULE_TARGET = "ScheduleTriggerFunction"
SCHEDULER_ROLE = "SchedulerRole"
STATE_MACHINE_LOG_GROUP = "StateMachineLogGroup"
STATE_MACHINE_LOGGING_POLICY = "StateMachineLoggingPolicy"
LOG_LEVEL_PARAMETER = "StateMachineLogLevel"
PAYLOAD_BUCKET_ID = "PayloadBucket"
SCRIPT_FUNCTION = "PythonTaskFunction"  # where user scripts run, the only reader of their secrets
# Who reads the keys a deploy config names by secret: the model routes' and the search endpoint's.
LLM_FUNCTION = "LlmTaskFunction"
SEARCH_FUNCTION = "WebSearchTaskFunction"
CONFIG_VARIABLE = "ORCHESTRATOR_CONFIG"
SECRET_PREFIX = "orchestrator/"  # stores/secretsmanager.py: `get_secret("x")` reads `orchestrator/x`
# `context.get_secret("name")` with a literal name; Secrets Manager names are [A-Za-z0-9/_+=.@-].
_SECRET_CALL = re.compile(r"""get_secret\(\s*(['"])([A-Za-z0-9/_+=.@-]+)\1\s*\)""")

_TOP_LEVEL_ORDER = (
    "AWSTemplateFormatVersion",
    "Transform",
    "Description",
    "Metadata",
    "Parameters",
    "Mappings",
    "Conditions",
    "Rules",
    "Globals",
    "Resources",
    "Outputs",
)
_STATE_MACHINE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RESOURCE_ORDER = ("Type", "Condition", "DependsOn", "Metadata", "Properties")


class TemplateError(OrchestratorError):
    """The template cannot be built (a clash of logical ids, a malformed base template)."""


# -- CloudFormation short-form tags ----------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """`!Ref Name`: a resource's id or a parameter's value."""

    name: str


@dataclass(frozen=True)
class GetAtt:
    """`!GetAtt Resource.Attribute`."""

    target: str


@dataclass(frozen=True)
class Sub:
    """`!Sub "text ${Name}"`, or `!Sub [text, {Name: value}]` when `value` is a list."""

    value: str | list[Any]


@dataclass(frozen=True)
class Intrinsic:
    """Any other short-form function (`!If`, `!Equals`, `!Select`, `!Split`, `!Join`, ...)."""

    function: str
    value: Any


_STACK_SUFFIX = {"StackSuffix": Intrinsic("Select", [2, Intrinsic("Split", ["/", Ref("AWS::StackId")])])}
PAYLOAD_BUCKET_NAME = Sub(["orchestrator-${StackSuffix}", _STACK_SUFFIX])
"""The payload bucket's name, as `infra/template.base.yaml` gives it (`ORCHESTRATOR_PAYLOAD_BUCKET`).
Named, not referenced: the upload trigger's S3 event makes the bucket depend on a function that
names every state machine, so a !Ref from a state machine would be a dependency cycle."""


class TemplateLoader(yaml.SafeLoader):
    """A safe loader that understands CloudFormation's `!Function` tags."""


class TemplateDumper(yaml.SafeDumper):
    """A safe dumper that writes intrinsics as tags, never anchors, and long strings unwrapped."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # indent list items under their key

    def choose_scalar_style(self) -> str:
        """Plain `!Ref Name`, not `!Ref 'Name'`, whenever plain style would be valid."""
        event = self.event
        if isinstance(event, yaml.ScalarEvent) and (event.tag or "").startswith("!") and not event.style:
            if self.analysis is None:
                self.analysis = self.analyze_scalar(event.value)
            analysis = self.analysis
            plain = analysis.allow_flow_plain if self.flow_level else analysis.allow_block_plain
            if plain and not analysis.empty and not analysis.multiline:
                return ""
        style: str = super().choose_scalar_style()
        return style


def _construct_intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return Ref(str(value))
    if suffix == "GetAtt":
        return GetAtt(".".join(value) if isinstance(value, list) else str(value))
    if suffix == "Sub":
        return Sub(value if isinstance(value, list) else str(value))
    return Intrinsic(suffix, value)


def _represent_value(dumper: yaml.SafeDumper, tag: str, value: Any) -> yaml.Node:
    if isinstance(value, list):
        return dumper.represent_sequence(tag, value, flow_style=False)
    if isinstance(value, dict):
        return dumper.represent_mapping(tag, value, flow_style=False)
    return dumper.represent_scalar(tag, str(value))


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


TemplateLoader.add_multi_constructor("!", _construct_intrinsic)
TemplateDumper.add_representer(str, _represent_str)
TemplateDumper.add_representer(Ref, lambda dumper, ref: dumper.represent_scalar("!Ref", ref.name))
TemplateDumper.add_representer(
    GetAtt, lambda dumper, attribute: dumper.represent_scalar("!GetAtt", attribute.target)
)
TemplateDumper.add_representer(Sub, lambda dumper, sub: _represent_value(dumper, "!Sub", sub.value))
TemplateDumper.add_representer(
    Intrinsic, lambda dumper, call: _represent_value(dumper, f"!{call.function}", call.value)
)


def load_template(text: str) -> dict[str, Any]:
    """Parse CloudFormation YAML (short-form tags included) into plain data."""
    loaded = yaml.load(text, Loader=TemplateLoader)  # nosec B506 - TemplateLoader is a SafeLoader
    if not isinstance(loaded, dict):
        raise TemplateError("a template must be a mapping")
    return loaded


def dump_template(template: Mapping[str, Any]) -> str:
    """Write a template as YAML with short-form tags, in a stable order."""
    return yaml.dump(
        _ordered(template),
        Dumper=TemplateDumper,
        sort_keys=False,
        default_flow_style=False,
        width=1_000_000,
        allow_unicode=True,
    )


def to_long_form(value: Any) -> Any:
    """The same data with intrinsics in JSON form (`{"Ref": ...}`, `{"Fn::GetAtt": [...]}`)."""
    if isinstance(value, Ref):
        return {"Ref": value.name}
    if isinstance(value, GetAtt):
        return {"Fn::GetAtt": value.target.split(".", 1)}
    if isinstance(value, Sub):
        return {"Fn::Sub": to_long_form(value.value)}
    if isinstance(value, Intrinsic):
        name = "Condition" if value.function == "Condition" else f"Fn::{value.function}"
        return {name: to_long_form(value.value)}
    if isinstance(value, dict):
        return {key: to_long_form(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_long_form(item) for item in value]
    return value


def _ordered(template: Mapping[str, Any]) -> dict[str, Any]:
    """Sections in CloudFormation's usual order, and each resource's keys `Type` first."""
    ordered = {key: template[key] for key in _TOP_LEVEL_ORDER if key in template}
    ordered.update({key: template[key] for key in sorted(template) if key not in ordered})
    resources = ordered.get("Resources")
    if isinstance(resources, dict):
        ordered["Resources"] = {
            logical_id: _ordered_resource(resource) for logical_id, resource in resources.items()
        }
    return ordered


def _ordered_resource(resource: Any) -> Any:
    if not isinstance(resource, dict):
        return resource
    ordered = {key: resource[key] for key in _RESOURCE_ORDER if key in resource}
    ordered.update({key: resource[key] for key in sorted(resource) if key not in ordered})
    return ordered


# -- names -----------------------------------------------------------------------------------


def pascal_case(pipeline_id: str) -> str:
    """`data_analysis-pipeline` -> `DataAnalysisPipeline` (CloudFormation logical ids are alphanumeric)."""
    words = [word for word in re.split(r"[^A-Za-z0-9]+", pipeline_id) if word]
    if not words:
        raise TemplateError(f"pipeline id '{pipeline_id}' has no letters or digits to name resources by")
    return "".join(word[0].upper() + word[1:] for word in words)


def state_machine_id(pipeline_id: str) -> str:
    """Logical id of a pipeline's state machine."""
    if not _STATE_MACHINE_NAME.fullmatch(pipeline_id):
        raise TemplateError(
            f"pipeline id '{pipeline_id}' must be letters, digits, '-' and '_' only: "
            "it names the state machine `<stack>-<pipeline id>`"
        )
    return f"{pascal_case(pipeline_id)}StateMachine"


def schedule_id(pipeline_id: str, index: int) -> str:
    """Logical id of the `index`-th (0-based) `triggers.schedule` entry of a pipeline."""
    return f"{pascal_case(pipeline_id)}Schedule{index + 1}"


# -- generated resources ---------------------------------------------------------------------


def state_machine(
    pipeline_id: str,
    workflow_type: str,
    definition: Mapping[str, Any] | None,
    variants: Sequence[str] = (),
) -> dict[str, Any]:
    """A pipeline's `AWS::Serverless::StateMachine`, invoking only the functions its ASL names
    (without a definition: every base function and every one of `variants`)."""
    text = json.dumps(definition) if definition is not None else None
    named = named_functions(text) if text is not None else set(SUBSTITUTED_FUNCTIONS) | set(variants)
    substituted = [*SUBSTITUTED_FUNCTIONS, *(variant for variant in variants if variant in named)]
    invoked = [function for function in substituted if function in named]
    policies: list[Any] = [{"LambdaInvokePolicy": {"FunctionName": Ref(function)}} for function in invoked]
    policies.append(Ref(STATE_MACHINE_LOGGING_POLICY))
    substitutions: dict[str, Any] = {f"{function}Arn": GetAtt(f"{function}.Arn") for function in substituted}
    if text is not None and f'"{PAYLOAD_BUCKET}"' in text:  # a Distributed Map's items and results
        substitutions[PAYLOAD_BUCKET_ID] = PAYLOAD_BUCKET_NAME
    if text is not None and '"DISTRIBUTED"' in text:
        policies.append(distributed_map_policy(pipeline_id, payloads=PAYLOAD_BUCKET in text))
    return {
        "Type": "AWS::Serverless::StateMachine",
        "Properties": {
            "Name": Sub(f"${{AWS::StackName}}-{pipeline_id}"),
            "Type": workflow_type,
            "DefinitionUri": f"statemachine/{pipeline_id}.asl.json",
            "DefinitionSubstitutions": substitutions,
            "Logging": {
                "Destinations": [
                    {"CloudWatchLogsLogGroup": {"LogGroupArn": GetAtt(f"{STATE_MACHINE_LOG_GROUP}.Arn")}}
                ],
                "IncludeExecutionData": False,
                "Level": Ref(LOG_LEVEL_PARAMETER),
            },
            "Tracing": {"Enabled": True},
            "Policies": policies,
        },
    }


def distributed_map_policy(pipeline_id: str, *, payloads: bool) -> dict[str, Any]:
    """What a state machine with a Distributed Map needs (AWS's IAM policy for it): to start its
    own child executions and follow or stop them, and (`payloads`) to read its items from and
    write its results to the payload bucket, under `payloads/`."""
    arn = "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}"
    name = f"${{AWS::StackName}}-{pipeline_id}"
    statements: list[dict[str, Any]] = [
        {
            "Effect": "Allow",
            "Action": ["states:StartExecution"],
            "Resource": Sub(f"{arn}:stateMachine:{name}"),
        },
        {
            "Effect": "Allow",
            "Action": ["states:DescribeExecution", "states:StopExecution"],
            "Resource": Sub(f"{arn}:execution:{name}/*"),
        },
    ]
    if payloads:
        statements.append(
            {
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:ListMultipartUploadParts",
                    "s3:AbortMultipartUpload",
                ],
                "Resource": Sub(
                    ["arn:${AWS::Partition}:s3:::orchestrator-${StackSuffix}/payloads/*", _STACK_SUFFIX]
                ),
            }
        )
    return {"Statement": statements}


def secret_names(plans: Sequence[Plan]) -> list[str]:
    """The secrets the pipelines (and their child pipelines) read: every literal name in a
    `get_secret("...")` call anywhere in their tasks (scripts, generated task specs), sorted."""
    names: set[str] = set()
    for pipeline in deployed_pipelines(plans):
        for text in _strings(pipeline.model_dump(mode="json")):
            names.update(match.group(2) for match in _SECRET_CALL.finditer(text))
    return sorted(names)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def secrets_policy(names: Sequence[str], sid: str = "ReadNamedSecrets") -> dict[str, Any]:
    """`secretsmanager:GetSecretValue` on exactly the named secrets (`orchestrator/<name>`; the
    `-??????` is the random suffix Secrets Manager gives every secret's ARN)."""
    arn = "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:"
    return {
        "Statement": [
            {
                "Sid": sid,
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": [Sub(f"{arn}{SECRET_PREFIX}{name}-??????") for name in names],
            }
        ]
    }


def _add_secrets_policy(resources: dict[str, Any], names: Sequence[str]) -> None:
    """Let the script function (and its variants, which share its role) read `names`."""
    if names:
        _function_properties(resources, SCRIPT_FUNCTION).setdefault("Policies", []).append(
            secrets_policy(names)
        )


def add_deploy_config(
    template: dict[str, Any], config_file: str, llm_secrets: Sequence[str], search_secrets: Sequence[str]
) -> None:
    """Every function reads the deploy config at `config_file` (a global `ORCHESTRATOR_CONFIG`);
    the llm_task function (and its variants, which share its role) may read the secrets
    `llm_secrets`, the web_search_task function `search_secrets`, and no other function either."""
    function_globals = template.setdefault("Globals", {}).setdefault("Function", {})
    variables = function_globals.setdefault("Environment", {}).setdefault("Variables", {})
    variables[CONFIG_VARIABLE] = config_file
    resources = template.setdefault("Resources", {})
    for function, names in ((LLM_FUNCTION, llm_secrets), (SEARCH_FUNCTION, search_secrets)):
        if names:
            properties = _function_properties(resources, function)
            # a new list: the base template's functions may share one (a YAML alias)
            properties["Policies"] = [
                *properties.get("Policies", []),
                secrets_policy(names, "ReadProviderKeys"),
            ]


def schedule(pipeline_id: str, entry: Schedule) -> dict[str, Any]:
    """An EventBridge Scheduler schedule that starts a run of a pipeline with the entry's inputs."""
    # Scheduler fills in its context attributes: a delivery it retries starts no second run.
    payload = {
        "pipeline": pipeline_id,
        "inputs": entry.inputs,
        "idempotency_key": "<aws.scheduler.schedule-arn>@<aws.scheduler.scheduled-time>",
    }
    properties: dict[str, Any] = {
        "Description": (entry.description or f"{pipeline_id}: {entry.expression}")[:512],
        "ScheduleExpression": entry.expression,
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "ENABLED",
        "Target": {
            "Arn": GetAtt(f"{SCHEDULE_TARGET}.Arn"),
            "RoleArn": GetAtt(f"{SCHEDULER_ROLE}.Arn"),
            "Input": json.dumps(payload, sort_keys=True),
            "RetryPolicy": {"MaximumRetryAttempts": 2},
        },
    }
    return {"Type": "AWS::Scheduler::Schedule", "Properties": properties}


def _size_functions(resources: dict[str, Any], sizes: Mapping[str, FunctionSize]) -> None:
    """Raise (never lower) base functions' hand-written MemorySize/Timeout (for generated tasks)."""
    for function, size in sizes.items():
        properties = _function_properties(resources, function)
        for key, needed in (("MemorySize", size.memory_mb), ("Timeout", size.timeout_s)):
            current = properties.get(key)
            if needed is not None and (not isinstance(current, int) or needed > current):
                properties[key] = needed


def _function_properties(resources: dict[str, Any], function: str) -> dict[str, Any]:
    resource = resources.get(function)
    if not isinstance(resource, dict) or resource.get("Type") != "AWS::Serverless::Function":
        raise TemplateError(f"the base template has no function {function}")
    properties: dict[str, Any] = resource.setdefault("Properties", {})
    return properties


def function_variant(resources: Mapping[str, Any], variant: FunctionVariant) -> dict[str, Any]:
    """A variant of a base function: a copy of it (code, layer, environment, everything) with its
    own `MemorySize`/`Timeout`, under the base function's role (SAM's `<base>Role`, unless the
    base names a `Role` of its own) and without its events."""
    base = _function_properties(dict(resources), variant.base)
    properties = copy.deepcopy(base)
    properties.pop("Events", None)
    if "Role" not in properties:
        properties.pop("Policies", None)
        properties["Role"] = GetAtt(f"{variant.base}Role.Arn")
    size = variant.size
    if size.memory_mb is not None:
        properties["MemorySize"] = size.memory_mb
    if size.timeout_s is not None:
        properties["Timeout"] = size.timeout_s
    asked = ", ".join(
        part
        for part in (
            None if size.memory_mb is None else f"{size.memory_mb} MB",
            None if size.timeout_s is None else f"{size.timeout_s} s",
        )
        if part
    )
    described = str(properties.get("Description") or variant.base).rstrip(".")
    properties["Description"] = f"{described} ({asked}), for the tasks whose limits need it."
    resource = {key: value for key, value in resources[variant.base].items() if key != "Properties"}
    return {**copy.deepcopy(resource), "Properties": properties}


def state_machines_variable(pipeline_ids: Sequence[str]) -> Sub:
    """`{"<pipeline id>": "<state machine ARN>", ...}` as the triggers read it, resolved at deploy time."""
    pairs = ",".join(
        f'"{pipeline_id}":"${{{state_machine_id(pipeline_id)}}}"' for pipeline_id in sorted(pipeline_ids)
    )
    estimate = sum(len(pipeline_id) * 2 + 6 + _ARN_ESTIMATE for pipeline_id in pipeline_ids)
    if estimate > STATE_MACHINES_BUDGET:
        raise TemplateError(
            f"{len(pipeline_ids)} pipelines make {STATE_MACHINES_VARIABLE} about {estimate} bytes, more than "
            f"the {STATE_MACHINES_BUDGET} that Lambda's 4 KB environment leaves for it"
        )
    return Sub("{" + pairs + "}")


def _add_state_machines_variable(resources: dict[str, Any], variable: Sub) -> None:
    for function in TRIGGER_FUNCTIONS:
        resource = resources.get(function)
        if not isinstance(resource, dict):
            raise TemplateError(f"the base template has no {function}")
        properties = resource.setdefault("Properties", {})
        variables = properties.setdefault("Environment", {}).setdefault("Variables", {})
        variables[STATE_MACHINES_VARIABLE] = variable


def _add(section: dict[str, Any], logical_id: str, entry: Any) -> None:
    if logical_id in section:
        raise TemplateError(f"two resources or outputs would be named {logical_id}: rename a pipeline file")
    section[logical_id] = entry


def _check_functions(pipeline_id: str, definition: Mapping[str, Any], resources: Mapping[str, Any]) -> None:
    """Every function a definition names is one the template defines."""
    missing = sorted(named_functions(json.dumps(definition)) - set(resources))
    if missing:
        names = ", ".join(placeholder(function) for function in missing)
        raise TemplateError(f"the state machine of {pipeline_id} calls {names}, which the template lacks")


def _add_after(section: dict[str, Any], after: str, logical_id: str, entry: Any) -> None:
    """`_add`, placing the entry right after `after` (the template reads base, then variants)."""
    _add(section, logical_id, entry)
    keys = list(section)
    keys.remove(logical_id)
    keys.insert(keys.index(after) + 1, logical_id)
    reordered = {key: section[key] for key in keys}
    section.clear()
    section.update(reordered)


def build_template(
    base: Mapping[str, Any],
    plans: Sequence[Plan],
    definitions: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    config_file: str | None = None,
    llm_secrets: Sequence[str] = (),
    search_secrets: Sequence[str] = (),
) -> dict[str, Any]:
    """The whole SAM template: `base` plus the state machines and schedules of `plans`.

    Parameters
    ----------
    base:
        The hand-written template (`infra/template.base.yaml`, loaded with `load_template`).
        It is not modified.
    plans:
        One plan per deployed pipeline, each becoming `<PipelineId>StateMachine`; the function
        variants their tasks need are added (`aws.functions`).
    definitions:
        Compiled ASL by pipeline id, to grant each state machine only the functions it
        calls; a pipeline without one may invoke all of them.
    config_file, llm_secrets, search_secrets:
        Where the functions find the deploy config, and the secrets it names as the keys of
        the model routes and of the search endpoint (`add_deploy_config`); no config, none.
    """
    template = copy.deepcopy(dict(base))
    resources: dict[str, Any] = template.setdefault("Resources", {})
    outputs: dict[str, Any] = template.setdefault("Outputs", {})
    if config_file is not None:
        add_deploy_config(template, config_file, llm_secrets, search_secrets)
    _size_functions(resources, generated_task_sizes(plans))
    _add_secrets_policy(resources, secret_names(plans))
    variants = function_variants(plans)
    for logical_id, variant in reversed(variants.items()):  # each variant after its base, in order
        _add_after(resources, variant.base, logical_id, function_variant(resources, variant))
    _add_state_machines_variable(resources, state_machines_variable([plan.pipeline_id for plan in plans]))
    for plan in sorted(plans, key=lambda plan: plan.pipeline_id):
        pipeline: Pipeline = plan.pipeline
        machine = state_machine_id(plan.pipeline_id)
        definition = None if definitions is None else definitions.get(plan.pipeline_id)
        if definition is not None:
            _check_functions(plan.pipeline_id, definition, resources)
        resource = state_machine(plan.pipeline_id, pipeline.workflow_type, definition, list(variants))
        _add(resources, machine, resource)
        for index, entry in enumerate(pipeline.triggers.schedule):
            _add(resources, schedule_id(plan.pipeline_id, index), schedule(plan.pipeline_id, entry))
        _add(outputs, f"{machine}Arn", {"Description": pipeline.name, "Value": Ref(machine)})
    return template
