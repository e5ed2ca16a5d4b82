"""Offline checks of the `azd up` templates in infra/: no Bicep CLI exists here, so every other way.

- every .bicep file parses with pycep-parser;
- checkov (framework bicep) reports no failed check, and each skip in .checkov.yaml has a reason;
- the templates agree with the code: every app setting the code reads is set on the Function App
  under its exact name and at the code's default, the queues are the code's queues, and each role
  id is the built-in role its comment names;
- the locked-down properties that checkov's skipped checks would otherwise cover;
- what Azure refuses that the compiler would not: the Flex rules (app settings and site properties
  Flex Consumption refuses, each with its source), the instance-count range, the non-null
  assertion on conditional reads (BCP318), the resource-id shape check;
- host fidelity: the worker thread pool holds every invocation one instance may run, the records'
  time-to-live is the code's, and the app's identity may send to the results queue;
- a schema check: every property path set on every resource exists, and is not read-only, in the
  Azure SDK for Python model of that resource type at the pinned API version (RESOURCE_SCHEMAS).
- both auth modes (AZURE_OPENAI_AUTH api-key / entra), with the account named or the endpoint only
  (DEPLOYMENTS): `evaluate` reads the conditions for each, so the modules, role assignments, app
  settings and outputs of each mode are checked, and nothing reads a module that mode skips.

The code side is read from `shared.settings` (SETTING_DEFAULTS, SETTING_NAMES, SDK_ENVIRONMENT),
from CONTRACT.md section 1 when the steering `shared/` folder sits beside the repository, and from
`%NAME%` binding expressions and literal `os.environ` / `getenv` reads in function_app.py and shared/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

pytestmark = pytest.mark.infra

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
MAIN = INFRA / "main.bicep"
FUNCTION_APP_MODULE = INFRA / "modules" / "functionapp.bicep"
STORAGE_MODULE = INFRA / "modules" / "storage.bicep"
RBAC_MODULE = INFRA / "modules" / "rbac.bicep"
OPENAI_ACCESS_MODULE = INFRA / "modules" / "openai-access.bicep"
CHECKOV_CONFIG = REPO / ".checkov.yaml"
CONTRACT = REPO.parent / "shared" / "CONTRACT.md"
CODE_FILES = [REPO / "function_app.py", *sorted((REPO / "shared").glob("*.py"))]

BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

# Azure built-in roles, name -> id, as Microsoft publishes them ("Azure built-in roles", learn.microsoft.com).
BUILTIN_ROLES = {
    "Owner": "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
    "Contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "User Access Administrator": "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Queue Data Message Processor": "8a0f0c08-91a1-4084-bc3d-661d67233fed",
    "Storage Queue Data Message Sender": "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a",
    "Storage Queue Data Reader": "19e7f393-937e-4f77-808e-94535e297925",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Cognitive Services OpenAI Contributor": "a001fd3d-188f-4b5d-821b-7da978bf7442",
    "Cognitive Services OpenAI User": "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",
}

# Least privilege: the roles each principal gets, and nothing more.
APP_ROLES = {
    "Storage Blob Data Owner",
    "Storage Queue Data Contributor",
    "Monitoring Metrics Publisher",
}
USER_ROLES = {
    "Storage Queue Data Message Sender",  # on cancel-requests
    "Storage Queue Data Message Processor",  # on cancel-results: read and take records
    "Storage Queue Data Reader",  # on cancel-requests-poison: look only
}
# api-key mode: the app reads the key, the deploying user may set it. entra mode, with the account
# named: the app may cancel fine-tuning jobs there. Cancelling is a data action under
# Microsoft.CognitiveServices/accounts/OpenAI/fine-tunes/ (read, write, delete); Cognitive Services
# OpenAI User holds only OpenAI/*/read and inference actions, Cognitive Services OpenAI Contributor
# holds OpenAI/* without listKeys (Azure built-in roles, "AI + machine learning", learn.microsoft.com).
APP_KEY_ROLE = "Key Vault Secrets User"
USER_KEY_ROLE = "Key Vault Secrets Officer"
APP_OPENAI_ROLE = "Cognitive Services OpenAI Contributor"

# Read by the code path but provided by the platform or only used locally, never set by the template.
NOT_APP_SETTINGS = {
    "IDENTITY_ENDPOINT",  # set by App Service for managed identity
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "REQUESTS_CA_BUNDLE",  # local emulators' TLS only
    "CURL_CA_BUNDLE",  # requests' fallback name for the same
    "SSL_CERT_FILE",
    "WEBSITE_AUTH_ENABLED",  # set by App Service when its Authentication is on, never by us
}

# The Flex rules: what Flex Consumption refuses or ignores, each with the source that says so.
# "Flex deprecations" is the "Flex Consumption plan deprecations" section of the Azure Functions app
# settings reference (learn.microsoft.com/azure/azure-functions/functions-app-settings); Microsoft's
# reference Flex template (Azure-Samples/functions-quickstart-python-http-azd, infra/app/api.bicep at
# 7ed4638) sets none of them.
FLEX_DEPRECATIONS = "Flex deprecations (functions-app-settings#flex-consumption-plan-deprecations)"
FLEX_REFUSED_APP_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME": f"functionAppConfig.runtime.name instead; {FLEX_DEPRECATIONS}",
    "FUNCTIONS_WORKER_RUNTIME_VERSION": f"functionAppConfig.runtime.version instead; {FLEX_DEPRECATIONS}",
    "FUNCTIONS_EXTENSION_VERSION": f"the platform picks the host; {FLEX_DEPRECATIONS}",
    "WEBSITE_RUN_FROM_PACKAGE": f"functionAppConfig.deployment.storage instead; {FLEX_DEPRECATIONS}",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING": f"no content share on Flex; {FLEX_DEPRECATIONS}",
    "WEBSITE_CONTENTSHARE": f"no content share on Flex; {FLEX_DEPRECATIONS}",
    "WEBSITE_CONTENTOVERVNET": f"no content share on Flex; {FLEX_DEPRECATIONS}",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION": f"no content share on Flex; {FLEX_DEPRECATIONS}",
    "SCM_DO_BUILD_DURING_DEPLOYMENT": f"Flex deployments are one path, no build settings; {FLEX_DEPRECATIONS}",
    "ENABLE_ORYX_BUILD": f"Flex deployments are one path, no build settings; {FLEX_DEPRECATIONS}",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT": f"scaleAndConcurrency.maximumInstanceCount instead; {FLEX_DEPRECATIONS}",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY": f"scaleAndConcurrency.triggers.http.perInstanceConcurrency instead; {FLEX_DEPRECATIONS}",
    "FUNCTIONS_WORKER_PROCESS_COUNT": f"{FLEX_DEPRECATIONS}",
    "WEBSITE_NODE_DEFAULT_VERSION": f"{FLEX_DEPRECATIONS}",
    "WEBSITE_VNET_ROUTE_ALL": f"{FLEX_DEPRECATIONS}",
    "WEBSITE_DNS_SERVER": f"{FLEX_DEPRECATIONS}",
}
FLEX_REFUSED_SITE_PROPERTIES = {
    "properties.siteConfig.ftpsState": (
        'refused: "... (Site.SiteConfig.FtpsState, ...) for Flex Consumption sites is invalid" '
        f"(microsoft/azure-pipelines-tasks#21032); {FLEX_DEPRECATIONS}"
    ),
    "properties.siteConfig.linuxFxVersion": f"functionAppConfig.runtime instead; {FLEX_DEPRECATIONS}",
    "properties.siteConfig.netFrameworkVersion": f"functionAppConfig.runtime instead; {FLEX_DEPRECATIONS}",
    "properties.siteConfig.javaVersion": f"functionAppConfig.runtime instead; {FLEX_DEPRECATIONS}",
    "properties.siteConfig.powerShellVersion": f"functionAppConfig.runtime instead; {FLEX_DEPRECATIONS}",
    "properties.siteConfig.functionAppScaleLimit": f"scaleAndConcurrency.maximumInstanceCount instead; {FLEX_DEPRECATIONS}",
    "properties.siteConfig.preWarmedInstanceCount": f"scaleAndConcurrency.alwaysReady instead; {FLEX_DEPRECATIONS}",
    "properties.siteConfig.minimumElasticInstanceCount": f"scaleAndConcurrency.alwaysReady instead; {FLEX_DEPRECATIONS}",
    "properties.siteConfig.use32BitWorkerProcess": f"{FLEX_DEPRECATIONS}",
    "properties.containerSize": f"scaleAndConcurrency.instanceMemoryMB instead; {FLEX_DEPRECATIONS}",
}

GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
ROLE_VAR_LINE = re.compile(rf"^\s*var\s+(\w+)\s*=\s*'({GUID.pattern})'\s*//\s*(.+?)\s*$")
INTERPOLATION = re.compile(r"\$\{(\w+)\}")
MEMBER_INTERPOLATION = re.compile(r"\$\{(\w+)(?:\.(\w+))?\}")


# --- reading the templates -------------------------------------------------------------------


@cache
def parsed(path: Path) -> dict[str, Any]:
    document = BicepParser().parse(file_path=path)
    for section in ("parameters", "variables", "resources", "modules", "outputs"):
        document.setdefault(section, {})  # pycep leaves out the sections a file does not have
    return document


def resource_body(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource's or module's object, whether or not it is deployed `if (...)`."""
    config = resource["config"]
    return config["config"] if "condition" in config and "config" in config else config


def is_conditional(resource: dict[str, Any]) -> bool:
    return "condition" in resource["config"] and "config" in resource["config"]


def is_expression(value: Any) -> bool:
    """pycep writes a function call or an operator as a one-key dict; an object literal is any other dict."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in {"function", "operator"}


def resources_of_type(path: Path, resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in parsed(path)["resources"].items()
        if resource["type"] == resource_type and not resource["existing"]
    }


def is_loop(declaration: dict[str, Any]) -> bool:
    return "loop_type" in declaration["config"]


def main_declarations(module_file: Path) -> dict[str, dict[str, Any]]:
    """symbol -> main.bicep's declarations of the module in `module_file`, loops included."""
    return {
        symbol: module
        for symbol, module in parsed(MAIN)["modules"].items()
        if (INFRA / module["detail"]["path"]).resolve() == module_file.resolve()
    }


def main_module(module_file: Path) -> dict[str, Any]:
    """main.bicep's one declaration of the module in `module_file` outside a loop (the default resource's)."""
    modules = [module for module in main_declarations(module_file).values() if not is_loop(module)]
    assert len(modules) == 1, f"main.bicep should call {module_file.name} once outside a loop, found {len(modules)}"
    return modules[0]


def main_module_loop(module_file: Path) -> tuple[str, dict[str, Any]]:
    """main.bicep's one `[for ...]` of the module in `module_file` (one instance per extra resource)."""
    loops = [(symbol, module) for symbol, module in main_declarations(module_file).items() if is_loop(module)]
    assert len(loops) == 1, f"main.bicep should loop over {module_file.name} once, found {len(loops)}"
    return loops[0]


def module_call(module_file: Path) -> dict[str, Any]:
    """The params main.bicep passes to a module."""
    return resource_body(main_module(module_file))["params"]


def resolve(value: Any, template: Path, caller: dict[str, Any] | None = None) -> str | None:
    """The value of a simple expression: a literal, a param, a var, or '${...}' of those; else None.

    pycep writes an identifier and a string literal the same way, so a string naming a param or
    var of the file is read as a reference to it (the templates keep such names distinct).
    """
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        return None
    doc = parsed(template)
    if value in doc["parameters"]:
        if caller is not None and value in caller:
            return resolve(caller[value], MAIN)
        return resolve(doc["parameters"][value]["default"], template, caller)
    if value in doc["variables"]:
        return resolve(doc["variables"][value]["value"], template, caller)

    def substitute(match: re.Match[str]) -> str:
        inner = resolve(match.group(1), template, caller)
        return inner if inner is not None else match.group(0)

    return INTERPOLATION.sub(substitute, value)


def function_app() -> dict[str, Any]:
    sites = resources_of_type(FUNCTION_APP_MODULE, "Microsoft.Web/sites")
    assert len(sites) == 1, "functionapp.bicep should declare one Microsoft.Web/sites"
    return resource_body(next(iter(sites.values())))


def app_settings() -> dict[str, Any]:
    """name -> raw value of siteConfig.appSettings on the Function App."""
    entries = function_app()["properties"]["siteConfig"]["appSettings"]
    settings = {entry["name"]: entry["value"] for entry in entries}
    assert len(settings) == len(entries), "an app setting is listed twice"
    return settings


def app_setting_value(name: str) -> str | None:
    return resolve(app_settings()[name], FUNCTION_APP_MODULE, module_call(FUNCTION_APP_MODULE))


# --- evaluating the templates for one way of deploying them ----------------------------------
#
# `resolve` reads simple values at the parameters' defaults. `evaluate` reads conditions and
# ternaries for a given set of main.bicep parameters (a Deployment), so each auth mode can be
# checked: which modules and role assignments deploy, and what each app setting becomes.

# An Azure OpenAI account id of the documented shape, for deployments that name one.
OPENAI_ACCOUNT_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-openai"
    "/providers/Microsoft.CognitiveServices/accounts/aoai-example"
)

# Bicep's operator precedence, highest binds tightest (Bicep docs, "Operator precedence and associativity").
OPERATOR_PRECEDENCE = {
    "conditional": 0,
    "coalesce": 1,
    "or": 2,
    "and": 3,
    "equals": 4,
    "not_equals": 4,
    "equals_case_insensitive": 4,
    "not_equals_case_insensitive": 4,
    "greater_than": 5,
    "greater_than_or_equals": 5,
    "less_than": 5,
    "less_than_or_equals": 5,
    "add": 6,
    "minus": 6,
    "multiply": 7,
    "divide": 7,
    "modulo": 7,
}


def bicep_union(*values: Any) -> Any:
    """Bicep's union(): objects merge (later wins), arrays join without repeats."""
    if all(isinstance(v, dict) for v in values):
        return {key: item for value in values for key, item in value.items()}
    assert all(isinstance(v, list) for v in values), f"union of {values!r}"
    return list(dict.fromkeys(item for value in values for item in value))


def bicep_string(value: Any) -> str:
    """ARM's string(): JSON for an object or array (a module output stands for a URL of its own)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=lambda item: item.as_url())


# The Bicep functions main.bicep reads the account ids and the extra resources with, by pycep's names.
STRING_FUNCTIONS = {
    "split": lambda text, delimiters: re.split("|".join(map(re.escape, [delimiters] if isinstance(delimiters, str) else delimiters)), text),
    "join": lambda items, separator: separator.join(items),
    "length": len,
    "to_lower": str.lower,
    "concat": lambda *parts: "".join(parts),
    "contains": lambda container, item: item in container,
    "range": lambda start, count: list(range(start, start + count)),
    "substring": lambda text, start, length: text[start : start + length],
    "index_of": lambda items, item: items.index(item) if item in items else -1,
    "last_index_of": lambda items, item: len(items) - 1 - items[::-1].index(item) if item in items else -1,
    "union": bicep_union,
    "string": bicep_string,
}


COMPARISONS = {
    "and": lambda left, right: left and right,
    "or": lambda left, right: left or right,
    "equals": lambda left, right: left == right,
    "not_equals": lambda left, right: left != right,
    "less_than": lambda left, right: left < right,
    "greater_than": lambda left, right: left > right,
}


class Unknown:
    """A value known only at deployment time: a module's output, a resource's property."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"<{self.text}>"

    def as_url(self) -> str:
        """A URL standing for this value (the module outputs read are endpoints and the vault's URI)."""
        return "https://" + re.sub(r"[^a-z0-9]+", "-", self.text.lower()).strip("-") + ".example.test/"


@dataclass(frozen=True)
class Deployment:
    """One way of deploying main.bicep: the parameters given, the rest at their defaults."""

    name: str
    params: dict[str, Any]


DEPLOYMENTS = [
    Deployment("api-key, account named", {"azureOpenAiResourceId": OPENAI_ACCOUNT_ID}),
    Deployment("api-key, endpoint only", {"azureOpenAiEndpoint": "https://aoai-example.openai.azure.com/"}),
    Deployment("entra, account named", {"azureOpenAiAuth": "entra", "azureOpenAiResourceId": OPENAI_ACCOUNT_ID}),
    Deployment(
        "entra, endpoint only",
        {"azureOpenAiAuth": "entra", "azureOpenAiEndpoint": "https://aoai-example.openai.azure.com/"},
    ),
]


# Extra resources (azureOpenAiResources, AZURE_OPENAI_RESOURCES): one of each kind.
def account_id(name: str, group: str = "rg-openai") -> str:
    return OPENAI_ACCOUNT_ID.replace("rg-openai", group).replace("aoai-example", name)


EXTRA_RESOURCES = [
    {"name": "sweden", "resourceId": account_id("aoai-sweden", "rg-sweden"), "auth": "entra"},
    {"name": "ncus", "resourceId": account_id("aoai-ncus"), "auth": "api-key", "apiVersion": "v1"},
    {"name": "west-2", "endpoint": "https://aoai-west.openai.azure.com/", "auth": "api-key"},
    {"name": "east", "endpoint": "https://aoai-east.openai.azure.com/", "auth": "entra"},
]
KEYLESS_EXTRAS = [r for r in EXTRA_RESOURCES if r["auth"] == "entra"]
DEFAULT_ENDPOINT = {"azureOpenAiEndpoint": "https://aoai-example.openai.azure.com/"}
EXTRA_DEPLOYMENTS = [
    Deployment("api-key default + extras", {**DEFAULT_ENDPOINT, "azureOpenAiResources": EXTRA_RESOURCES}),
    Deployment("entra default + extras", {"azureOpenAiAuth": "entra", "azureOpenAiResourceId": OPENAI_ACCOUNT_ID, "azureOpenAiResources": EXTRA_RESOURCES}),
    Deployment("entra default + keyless extras", {"azureOpenAiAuth": "entra", **DEFAULT_ENDPOINT, "azureOpenAiResources": KEYLESS_EXTRAS}),
    Deployment("extras only", {"azureOpenAiResources": EXTRA_RESOURCES}),
    Deployment("keyless extras only", {"azureOpenAiResources": KEYLESS_EXTRAS}),
]


def auth_mode(deployment: Deployment) -> str:
    return deployment.params.get("azureOpenAiAuth", parsed(MAIN)["parameters"]["azureOpenAiAuth"]["default"])


@dataclass(frozen=True)
class Scope:
    """A template being evaluated: main.bicep with a Deployment's parameters, or a module called from it."""

    template: Path
    deployment: Deployment
    caller: dict[str, Any] | None = None  # the params main.bicep passes, as expressions of main.bicep
    names: dict[str, Any] = field(default_factory=dict)  # loop and lambda variables, by name
    caller_names: dict[str, Any] = field(default_factory=dict)  # the caller's, for a module in a loop

    def parent(self) -> Scope:
        return Scope(MAIN, self.deployment, names=self.caller_names)

    def binding(self, **names: Any) -> Scope:
        return Scope(self.template, self.deployment, self.caller, {**self.names, **names}, self.caller_names)


def main_scope(deployment: Deployment) -> Scope:
    return Scope(MAIN, deployment)


def module_scope(module_file: Path, deployment: Deployment) -> Scope:
    return Scope(module_file, deployment, module_call(module_file))


def precedence_is_unambiguous(operator: dict[str, Any]) -> bool:
    """Whether pycep's tree of this operator can be trusted.

    pycep nests `a OP1 b OP2 c` as `a OP1 (b OP2 c)` whatever the operators, `!a OP b` as
    `!(a OP b)` and `r.a OP b` as `r.(a OP b)` (pycep-parser 0.7.1), and it keeps no parentheses. A right operand that is itself
    an operator is read right only when it binds tighter (or is the same associative && / ||).
    """
    kind, operands = operator["type"], operator["operands"]
    if kind == "property_accessor":  # `r.a == b` comes out as `r.(a == b)`
        member = operands["operand_2"]
        return not (isinstance(member, dict) and "operator" in member and member["operator"]["type"] != "property_accessor")
    if kind == "not":
        inner = operands["bool_value"]
        return not (isinstance(inner, dict) and "operator" in inner and inner["operator"]["type"] in OPERATOR_PRECEDENCE)
    if kind not in OPERATOR_PRECEDENCE or kind == "conditional":
        return True
    right = operands.get("operand_2")
    if not (isinstance(right, dict) and "operator" in right and right["operator"]["type"] in OPERATOR_PRECEDENCE):
        return True
    inner = right["operator"]["type"]
    return OPERATOR_PRECEDENCE[inner] > OPERATOR_PRECEDENCE[kind] or inner == kind in {"and", "or"}


def accessor_path(value: Any, scope: Scope | None = None) -> str:
    """`keyVault.outputs.uri` (or `extraOpenAiKeys[1].outputs.endpoint`) from pycep's nested accessors."""
    if isinstance(value, dict) and "operator" in value and value["operator"]["type"] == "property_accessor":
        operands = value["operator"]["operands"]
        return f"{accessor_path(operands['operand_1'], scope)}.{accessor_path(operands['operand_2'], scope)}"
    if isinstance(value, dict) and "operator" in value and value["operator"]["type"] == "index_accessor":
        operands = value["operator"]["operands"]
        index = evaluate(operands["operand_2"], scope) if scope is not None else operands["operand_2"]
        return f"{accessor_path(operands['operand_1'], scope)}[{index}]"
    return value if isinstance(value, str) else json.dumps(value)


def is_operator(value: Any) -> bool:
    return isinstance(value, dict) and "operator" in value


def unknowns(value: Any) -> list[Unknown]:
    """The Unknowns in a value, however deep in objects and arrays."""
    if isinstance(value, Unknown):
        return [value]
    if isinstance(value, dict):
        return [u for item in value.values() for u in unknowns(item)]
    if isinstance(value, list):
        return [u for item in value for u in unknowns(item)]
    return []


def contains_unknown(value: Any) -> bool:
    return bool(unknowns(value))


def call_lambda(expression: dict[str, Any], scope: Scope, *arguments: Any) -> Any:
    assert expression.get("type") == "lambda_expression", f"not a lambda: {json.dumps(expression)}"
    detail = expression["detail"]
    names = [detail[key] for key in sorted(k for k in detail if k.startswith("var_"))]
    return evaluate(detail["expression"], scope.binding(**dict(zip(names, arguments, strict=True))))


# The Bicep functions of lambdas, by pycep's names: (array, lambda, ...) in Bicep's argument order.
LAMBDA_FUNCTIONS = {
    "map": lambda items, scope, fn: [call_lambda(fn, scope, item) for item in items],
    "filter": lambda items, scope, fn: [item for item in items if call_lambda(fn, scope, item) is True],
    "toObject": lambda items, scope, key, value: {call_lambda(key, scope, i): call_lambda(value, scope, i) for i in items},
}


def evaluate_loop(loop: dict[str, Any], scope: Scope) -> list[Any]:
    """A `[for ...]` value: its body for each item where its `if(...)` holds."""
    kind, detail = loop["loop_type"]["type"], loop["loop_type"]["detail"]
    assert kind in {"array", "array_index"}, f"loop over {kind}"
    items = evaluate(detail["array_name"], scope)
    assert isinstance(items, list), f"loop over {items!r}"
    values = []
    for index, item in enumerate(items):
        inner = scope.binding(**{detail["item_name"]: item, **({detail["index_name"]: index} if kind == "array_index" else {})})
        if loop.get("condition") is None or evaluate(loop["condition"], inner) is True:
            values.append(evaluate(loop["config"], inner))
    return values


def evaluate(value: Any, scope: Scope) -> Any:
    """The value of an expression in `scope`: literals, params, vars, `${}`, the operators and
    empty(); anything else is Unknown. Raises where pycep's reading may not be Bicep's."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, list):
        return [evaluate(item, scope) for item in value]
    if isinstance(value, dict) and "loop_type" in value:
        return evaluate_loop(value, scope)
    if isinstance(value, dict) and not is_expression(value) and value.get("type") != "lambda_expression":
        return {key: evaluate(item, scope) for key, item in value.items()}  # an object literal
    if isinstance(value, str):
        doc = parsed(scope.template)
        if value in scope.names:
            return scope.names[value]
        if value in doc["parameters"]:
            if scope.caller is not None and value in scope.caller:
                return evaluate(scope.caller[value], scope.parent())
            if scope.caller is None and value in scope.deployment.params:
                return scope.deployment.params[value]
            return evaluate(doc["parameters"][value].get("default"), scope)
        if value in doc["variables"]:
            return evaluate(doc["variables"][value]["value"], scope)

        def substitute(match: re.Match[str]) -> str:
            inner = evaluate(match.group(1), scope)
            if match.group(2) is not None and isinstance(inner, dict):  # `${r.name}` of a loop's item
                inner = inner[match.group(2)]
            return match.group(0) if isinstance(inner, Unknown) else str(inner)

        return MEMBER_INTERPOLATION.sub(substitute, value)
    if isinstance(value, dict) and "function" in value:
        function = value["function"]
        if function["type"] == "empty":
            item = evaluate(function["parameters"]["item_to_test"], scope)
            if isinstance(item, Unknown):
                # The module outputs the templates test are names and URLs of what the module made.
                assert ".outputs." in item.text, f"empty() of {item}"
                return False
            return item is None or len(item) == 0
        if function["type"] in LAMBDA_FUNCTIONS:
            items, *lambdas = function["parameters"].values()
            items = evaluate(items, scope)
            assert isinstance(items, list), f"{function['type']}() of {items!r}"
            return LAMBDA_FUNCTIONS[function["type"]](items, scope, *lambdas)
        arguments = [evaluate(argument, scope) for argument in function["parameters"].values()]
        if function["type"] == "string" and not isinstance(arguments[0], Unknown):
            return bicep_string(arguments[0])  # an object holding module outputs: each written as its URL
        if function["type"] in STRING_FUNCTIONS and not any(isinstance(a, Unknown) for a in arguments):
            return STRING_FUNCTIONS[function["type"]](*arguments)
        return Unknown(json.dumps(value))
    if isinstance(value, dict) and "operator" in value:
        operator = value["operator"]
        assert precedence_is_unambiguous(operator), (
            f"pycep may have misread this expression's precedence; give the inner part a var: {json.dumps(value)}"
        )
        kind, operands = operator["type"], operator["operands"]
        if kind == "property_accessor":
            owner = operands["operand_1"]
            if isinstance(owner, str) and owner in scope.names or is_operator(owner) and owner["operator"]["type"] != "index_accessor":
                record = evaluate(owner, scope)
                assert isinstance(record, dict) and isinstance(operands["operand_2"], str), f"{record!r}.{operands['operand_2']}"
                return record[operands["operand_2"]]
            if is_operator(owner) and isinstance(items := evaluate(owner["operator"]["operands"]["operand_1"], scope), list):
                record = items[evaluate(owner["operator"]["operands"]["operand_2"], scope)]
                return record[operands["operand_2"]]
            return Unknown(accessor_path(value, scope))
        if kind == "index_accessor":
            items, index = evaluate(operands["operand_1"], scope), evaluate(operands["operand_2"], scope)
            return Unknown(accessor_path(value, scope)) if isinstance(items, Unknown | str) else items[index]
        if kind == "conditional":
            condition = evaluate(operands["condition"], scope)
            assert isinstance(condition, bool), f"condition {json.dumps(operands['condition'])} is {condition!r}"
            return evaluate(operands["true_value"] if condition else operands["false_value"], scope)
        if kind == "not":
            inner = evaluate(operands["bool_value"], scope)
            assert isinstance(inner, bool), f"! of {inner!r}"
            return not inner
        if kind in COMPARISONS:
            left, right = evaluate(operands["operand_1"], scope), evaluate(operands["operand_2"], scope)
            assert not isinstance(left, Unknown) and not isinstance(right, Unknown), f"{kind} of {left!r}, {right!r}"
            return COMPARISONS[kind](left, right)
        return Unknown(json.dumps(value))
    return Unknown(json.dumps(value))


def condition_holds(declaration: dict[str, Any], scope: Scope) -> bool:
    """Whether a resource or module declared in `scope` deploys (no condition: it does)."""
    if not is_conditional(declaration):
        return True
    held = evaluate(declaration["config"]["condition"], scope)
    assert isinstance(held, bool), f"condition {json.dumps(declaration['config']['condition'])} is {held!r}"
    return held


def module_deploys(module_file: Path, deployment: Deployment) -> bool:
    return condition_holds(main_module(module_file), main_scope(deployment))


@dataclass(frozen=True)
class ModuleInstance:
    """One deployment of a module main.bicep declares: `symbol`, or `symbol[index]` of a `[for ...]`."""

    symbol: str
    index: int | None
    path: Path
    declaration: dict[str, Any]
    main: Scope  # main.bicep's scope, with the loop's item and index bound

    @property
    def label(self) -> str:
        return self.symbol if self.index is None else f"{self.symbol}[{self.index}]"

    @property
    def body(self) -> dict[str, Any]:
        return resource_body(self.declaration)

    @property
    def deploys(self) -> bool:
        if is_loop(self.declaration):
            condition = self.declaration["config"]["condition"]
            return condition is None or evaluate(condition, self.main) is True
        return condition_holds(self.declaration, self.main)

    def scope(self) -> Scope:
        """The module's own template, its params read from main.bicep where this instance sits."""
        return Scope(self.path, self.main.deployment, self.body["params"], caller_names=self.main.names)


def module_instances(deployment: Deployment) -> list[ModuleInstance]:
    """Every module main.bicep declares, a loop once per item, deployed or not."""
    main = main_scope(deployment)
    instances = []
    for symbol, declaration in parsed(MAIN)["modules"].items():
        path = (INFRA / declaration["detail"]["path"]).resolve()
        if not is_loop(declaration):
            instances.append(ModuleInstance(symbol, None, path, declaration, main))
            continue
        loop = declaration["config"]["loop_type"]
        assert loop["type"] == "array_index", f"{symbol}: loop with an index, for the names of its instances"
        detail = loop["detail"]
        for index, item in enumerate(evaluate(detail["array_name"], main)):
            bound = main.binding(**{detail["item_name"]: item, detail["index_name"]: index})
            instances.append(ModuleInstance(symbol, index, path, declaration, bound))
    return instances


def app_settings_of(deployment: Deployment) -> dict[str, Any]:
    """name -> value of each app setting for this deployment (Unknown where only Azure knows it)."""
    scope = module_scope(FUNCTION_APP_MODULE, deployment)
    return {name: evaluate(raw, scope) for name, raw in app_settings().items()}


# --- reading the code ------------------------------------------------------------------------


def contract_settings() -> dict[str, str | None]:
    """CONTRACT.md section 1's table: name -> default (None when required)."""
    text = CONTRACT.read_text(encoding="utf-8")
    section = text.split("## 1.", 1)[1].split("\n## ", 1)[0]
    settings: dict[str, str | None] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`[A-Za-z_][A-Za-z0-9_]*`", cells[0]):
            default = cells[2].strip("`") or None
            settings[cells[0].strip("`")] = default
    assert settings, "CONTRACT.md section 1 has no settings table"
    return settings


def code_settings_module() -> Any | None:
    try:
        import shared.settings as settings_module
    except ImportError:
        return None
    return settings_module


def settings_read_by_code() -> set[str]:
    """Every environment name the code, the bindings or the contract say the app reads."""
    names: set[str] = set()
    module = code_settings_module()
    if module is not None:
        names |= set(getattr(module, "SETTING_NAMES", ()))
        names |= set(getattr(module, "OPTIONAL_SETTINGS", ()))
        names |= set(getattr(module, "SETTING_DEFAULTS", {}))
        names |= set(getattr(module, "SDK_ENVIRONMENT", ()))
    if CONTRACT.exists():
        names |= set(contract_settings())
    reads = re.compile(
        r"""(?:environ\s*\[\s*|environ\.get\(\s*|getenv\(\s*)["']([A-Za-z_][A-Za-z0-9_]*)["']"""
    )
    for path in CODE_FILES:
        if path.exists():
            text = path.read_text(encoding="utf-8")
            # Binding expressions in keyword arguments (queue_name="%X%"), not strftime formats.
            names |= set(re.findall(r"""=\s*["'][^"'\n]*?%([A-Za-z_][A-Za-z0-9_]*)%""", text))
            names |= set(reads.findall(text))
    assert names, "found no setting names: neither shared.settings nor CONTRACT.md could be read"
    return names


def binding_connections() -> set[str]:
    names: set[str] = set()
    for path in CODE_FILES:
        if path.exists():
            names |= set(re.findall(r"""connection\s*=\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""", path.read_text()))
    return names


def code_defaults() -> dict[str, str]:
    """The optional settings' defaults: the code's own mapping, else CONTRACT.md's table."""
    module = code_settings_module()
    if module is not None and getattr(module, "SETTING_DEFAULTS", None):
        return dict(module.SETTING_DEFAULTS)
    return {name: default for name, default in contract_settings().items() if default is not None}


# --- parsing ---------------------------------------------------------------------------------


def test_there_are_templates_to_check() -> None:
    assert MAIN in BICEP_FILES
    assert len(BICEP_FILES) > 1, "main.bicep should be split into small modules under infra/"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_file_parses(path: Path) -> None:
    try:
        document = BicepParser().parse(file_path=path)
    except Exception as err:  # lark raises several error types; any of them is a failure
        pytest.fail(f"{path.relative_to(REPO)} does not parse: {err}")
    assert document.get("resources") or document.get("modules"), f"{path.name} declares nothing"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_resource_pins_a_stable_api_version(path: Path) -> None:
    for name, resource in parsed(path)["resources"].items():
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", resource["api_version"] or ""), (
            f"{path.name}: resource {name} ({resource['type']}) has api version {resource['api_version']!r}"
        )
    text = path.read_text(encoding="utf-8")
    for type_string in re.findall(r"'(Microsoft\.[A-Za-z]+/[^']*)'", text):
        if "/" in type_string.split("@")[0] and not type_string.startswith("Microsoft.Authorization/roleDefinitions"):
            assert "@" in type_string, f"{path.name}: {type_string} has no pinned api version"


def test_module_paths_exist() -> None:
    for path in BICEP_FILES:
        for name, module in parsed(path)["modules"].items():
            target = path.parent / module["detail"]["path"]
            assert target.is_file(), f"{path.name}: module {name} points at missing {target}"


# --- checkov ---------------------------------------------------------------------------------


def find_checkov() -> str | None:
    candidates = [os.environ.get("CHECKOV"), str(REPO / ".venv-checkov" / "bin" / "checkov"), shutil.which("checkov")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def test_checkov_reports_no_failed_check() -> None:
    checkov = find_checkov()
    if checkov is None:
        pytest.fail(
            "checkov not found: set CHECKOV=/path/to/checkov, put it on PATH, or install it with "
            "`python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov` (make test does this)"
        )
    completed = subprocess.run(
        [checkov, "--config-file", str(CHECKOV_CONFIG), "--output", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON report (exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    reports = report if isinstance(report, list) else [report]
    bicep = [r for r in reports if isinstance(r, dict) and r.get("check_type") == "bicep"]
    assert bicep, f"checkov scanned no Bicep at all:\n{completed.stdout[:2000]}"
    summary = bicep[0]["summary"]
    results = bicep[0]["results"]
    failures = [
        f"{c['check_id']} {c['check_name']} -- {c['resource']} ({c['file_path']})" for c in results["failed_checks"]
    ]
    assert not failures, "checkov failed checks:\n" + "\n".join(failures)
    assert summary["parsing_errors"] == 0, f"checkov could not parse: {results.get('parsing_errors')}"
    assert summary["passed"] > 0
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_every_checkov_skip_is_listed_once_with_a_reason() -> None:
    lines = CHECKOV_CONFIG.read_text(encoding="utf-8").splitlines()
    start = lines.index("skip-check:")
    skips: dict[str, str] = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  - "):
            break
        match = re.fullmatch(r"  - (CKV2?_[A-Z]+_\d+)\s+#\s*(.+)", line)
        assert match, f"skip without a reason comment: {line!r}"
        assert match.group(1) not in skips, f"{match.group(1)} skipped twice"
        assert len(match.group(2)) >= 30, f"{match.group(1)}: reason too short to be one"
        skips[match.group(1)] = match.group(2)
    assert skips, ".checkov.yaml lists no skip-check entries"
    for path in BICEP_FILES:
        assert "checkov:skip" not in path.read_text(), f"{path.name}: skip inline; list it in .checkov.yaml"


# --- consistency with the code ---------------------------------------------------------------


def test_every_setting_the_code_reads_is_set_on_the_function_app() -> None:
    settings = app_settings()
    missing = []
    for name in sorted(settings_read_by_code() - NOT_APP_SETTINGS):
        if name in binding_connections() or name == "AzureWebJobsStorage":
            continue  # a connection: checked by its identity-based settings below
        if name not in settings:
            missing.append(name)
    assert not missing, f"app settings the code reads but the Function App does not set: {missing}"


def test_binding_connections_are_identity_based() -> None:
    settings = app_settings()
    for connection in binding_connections() | {"AzureWebJobsStorage"}:
        assert connection not in settings, f"{connection} as a connection string; use {connection}__* settings"
        assert resolve(settings[f"{connection}__credential"], FUNCTION_APP_MODULE) == "managedidentity"
        for part in ("clientId", "blobServiceUri", "queueServiceUri"):
            assert f"{connection}__{part}" in settings, f"{connection}__{part} is not set"
    assert settings["AzureWebJobsStorage__clientId"] == settings["AZURE_CLIENT_ID"] == "identityClientId"
    call = module_call(FUNCTION_APP_MODULE)
    assert "clientId" in json.dumps(call["identityClientId"])
    assert "blobEndpoint" in json.dumps(call["storageBlobEndpoint"])
    assert "queueEndpoint" in json.dumps(call["storageQueueEndpoint"])


def test_optional_settings_are_set_to_the_codes_defaults() -> None:
    for name, default in code_defaults().items():
        assert app_setting_value(name) == default, f"{name}: template sets {app_setting_value(name)!r}, code default {default!r}"


def test_application_insights_uses_the_identity() -> None:
    settings = app_settings()
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in settings
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=${identityClientId};Authorization=AAD"


def property_paths(value: Any, prefix: str) -> set[str]:
    """Dotted paths of every property an object literal sets, nested objects included."""
    paths: set[str] = set()
    if isinstance(value, dict) and not is_expression(value):
        for key, child in value.items():
            paths.add(f"{prefix}.{key}" if prefix else key)
            paths |= property_paths(child, f"{prefix}.{key}" if prefix else key)
    return paths


@pytest.mark.parametrize("setting", sorted(FLEX_REFUSED_APP_SETTINGS))
def test_no_app_setting_that_flex_consumption_rejects(setting: str) -> None:
    assert setting not in app_settings(), f"{setting} is not an app setting on Flex: {FLEX_REFUSED_APP_SETTINGS[setting]}"


@pytest.mark.parametrize("path", sorted(FLEX_REFUSED_SITE_PROPERTIES))
def test_no_site_property_that_flex_consumption_rejects(path: str) -> None:
    set_paths = property_paths(function_app(), "")
    assert "properties.siteConfig.minTlsVersion" in set_paths  # the walk reaches siteConfig
    assert path not in set_paths, f"{path} on a Flex site: {FLEX_REFUSED_SITE_PROPERTIES[path]}"


def test_flex_runtime_comes_from_function_app_config() -> None:
    runtime = function_app()["properties"]["functionAppConfig"]["runtime"]
    assert runtime["name"] == "python"
    assert resolve(runtime["version"], FUNCTION_APP_MODULE, module_call(FUNCTION_APP_MODULE)) == "3.11"


def test_queues_created_up_front_are_the_codes_queues() -> None:
    defaults = code_defaults()
    requests_queue = defaults["CANCEL_REQUESTS_QUEUE"]
    expected = {requests_queue, defaults["CANCEL_RESULTS_QUEUE"], f"{requests_queue}-poison"}
    passed = module_call(STORAGE_MODULE)["queueNames"]
    created = {resolve(name, MAIN) for name in passed}
    assert created == expected
    queues = resources_of_type(STORAGE_MODULE, "Microsoft.Storage/storageAccounts/queueServices/queues")
    assert len(queues) == 1, "storage.bicep should create the queues from queueNames"


def test_outputs_name_the_queues() -> None:
    outputs = parsed(MAIN)["outputs"]
    defaults = code_defaults()
    assert resolve(outputs["CANCEL_REQUESTS_QUEUE"]["value"], MAIN) == defaults["CANCEL_REQUESTS_QUEUE"]
    assert resolve(outputs["CANCEL_RESULTS_QUEUE"]["value"], MAIN) == defaults["CANCEL_RESULTS_QUEUE"]
    assert resolve(outputs["CANCEL_REQUESTS_POISON_QUEUE"]["value"], MAIN) == defaults["CANCEL_REQUESTS_QUEUE"] + "-poison"


# --- role assignments ------------------------------------------------------------------------


def role_variables() -> dict[str, str]:
    """var name -> role name, from `var x = '<guid>' // <role name>` lines, checked against BUILTIN_ROLES."""
    roles: dict[str, str] = {}
    for path in BICEP_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not GUID.search(line):
                continue
            match = ROLE_VAR_LINE.match(line)
            assert match, f"{path.name}:{number}: a GUID outside `var <name> = '<guid>' // <role name>`"
            var_name, guid, role_name = match.groups()
            assert role_name in BUILTIN_ROLES, f"{path.name}:{number}: {role_name!r} is not a known built-in role"
            assert guid.lower() == BUILTIN_ROLES[role_name], (
                f"{path.name}:{number}: {guid} is not {role_name} ({BUILTIN_ROLES[role_name]})"
            )
            roles[var_name] = role_name
    return roles


def role_assignments() -> list[tuple[str, str, str, bool]]:
    """(resource name, principal param, role name, conditional) of every role assignment."""
    roles = role_variables()
    found = []
    for path in BICEP_FILES:
        for name, resource in resources_of_type(path, "Microsoft.Authorization/roleAssignments").items():
            body = resource_body(resource)
            definition = body["properties"]["roleDefinitionId"]["function"]
            assert definition["type"] == "subscription_resource_id", f"{name}: role id not a subscriptionResourceId"
            role_var = definition["parameters"]["resource_name_1"]
            assert role_var in roles, f"{name}: role {role_var} is not a commented built-in role variable"
            naming = body["name"]["function"]
            assert naming["type"] == "guid", f"{name}: name is not guid(...)"
            principal = body["properties"]["principalId"]
            assert principal in naming["parameters"].values() and role_var in naming["parameters"].values(), (
                f"{name}: guid() must include the principal and the role"
            )
            found.append((name, principal, roles[role_var], is_conditional(resource)))
    return found


def test_role_ids_are_the_builtin_roles_their_comments_name() -> None:
    assert set(role_variables().values()) == APP_ROLES | USER_ROLES | {APP_KEY_ROLE, USER_KEY_ROLE, APP_OPENAI_ROLE}


def test_role_assignments_are_least_privilege() -> None:
    assignments = role_assignments()
    app = {role for _, principal, role, _ in assignments if principal == "appPrincipalId"}
    user = {role for _, principal, role, _ in assignments if principal == "userPrincipalId"}
    assert app == APP_ROLES | {APP_KEY_ROLE, APP_OPENAI_ROLE}
    assert user == USER_ROLES | {USER_KEY_ROLE}
    assert {principal for _, principal, _, _ in assignments} == {"appPrincipalId", "userPrincipalId"}
    for name, principal, _, conditional in assignments:
        if principal == "userPrincipalId":
            assert conditional, f"{name}: the user's roles apply only when AZURE_PRINCIPAL_ID is set"
    rbac_call = module_call(RBAC_MODULE)
    assert rbac_call["userPrincipalId"] == "principalId"
    app_principal = json.dumps(rbac_call["appPrincipalId"])
    assert '"identity"' in app_principal and '"principalId"' in app_principal


USER_PRINCIPAL_ID = "11111111-1111-1111-1111-111111111111"


def deployed_role_assignments(deployment: Deployment) -> list[tuple[ModuleInstance, str, str]]:
    """(module instance, principal param, role name) of every role assignment this deployment makes."""
    assert not resources_of_type(MAIN, "Microsoft.Authorization/roleAssignments"), "role assignments live in modules"
    roles = role_variables()
    deployed = []
    for instance in module_instances(deployment):
        assignments = resources_of_type(instance.path, "Microsoft.Authorization/roleAssignments")
        if not assignments or not instance.deploys:
            continue
        scope = instance.scope()
        for resource in assignments.values():
            if condition_holds(resource, scope):
                body = resource_body(resource)
                role_var = body["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
                deployed.append((instance, body["properties"]["principalId"], roles[role_var]))
    return deployed


def deployed_roles(deployment: Deployment) -> set[tuple[str, str]]:
    """(principal param, role name) of every role assignment this deployment makes."""
    return {(principal, role) for _, principal, role in deployed_role_assignments(deployment)}


@pytest.mark.parametrize("with_user", [True, False], ids=["AZURE_PRINCIPAL_ID set", "no AZURE_PRINCIPAL_ID"])
@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d.name)
def test_each_mode_grants_exactly_its_roles(deployment: Deployment, with_user: bool) -> None:
    """api-key: the key's roles on the vault. entra: no vault roles; the OpenAI role where the account is named."""
    if with_user:
        deployment = Deployment(deployment.name, {**deployment.params, "principalId": USER_PRINCIPAL_ID})
    api_key = auth_mode(deployment) == "api-key"
    account_named = "azureOpenAiResourceId" in deployment.params
    app = APP_ROLES | ({APP_KEY_ROLE} if api_key else {APP_OPENAI_ROLE} if account_named else set())
    user = (USER_ROLES | ({USER_KEY_ROLE} if api_key else set())) if with_user else set()
    expected = {("appPrincipalId", role) for role in app} | {("userPrincipalId", role) for role in user}
    assert deployed_roles(deployment) == expected


def test_the_openai_role_is_the_one_the_apps_errors_name() -> None:
    """In entra mode a refused token answers 502 naming the role (shared/resource_client.py OPENAI_ROLE): the one granted."""
    from shared.resource_client import OPENAI_ROLE

    assert OPENAI_ROLE == APP_OPENAI_ROLE


def test_the_openai_role_is_assigned_on_the_named_account() -> None:
    """Scoped to the existing account, named guid(account, principal, role), deployed in the account's group."""
    access = parsed(OPENAI_ACCESS_MODULE)
    account = access["resources"]["openAi"]
    assert account["existing"] and account["type"] == "Microsoft.CognitiveServices/accounts"
    assert account["config"]["name"] == "openAiAccountName"
    (assignment,) = resources_of_type(OPENAI_ACCESS_MODULE, "Microsoft.Authorization/roleAssignments").values()
    body = resource_body(assignment)
    assert body["scope"] == "openAi"
    assert accessor_path(body["name"]["function"]["parameters"]["base_string"]) == "openAi.id"
    assert body["properties"]["principalType"] == "ServicePrincipal"
    call = module_call(OPENAI_ACCESS_MODULE)
    assert accessor_path(call["appPrincipalId"]) == "identity.outputs.principalId"
    for deployment in DEPLOYMENTS:
        if module_deploys(OPENAI_ACCESS_MODULE, deployment):
            scope = main_module(OPENAI_ACCESS_MODULE)["config"]["config"]["scope"]["function"]
            assert scope["type"] == "resource_group"
            where = {name: evaluate(arg, main_scope(deployment)) for name, arg in scope["parameters"].items()}
            assert where == {"subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group_name": "rg-openai"}
            assert evaluate(call["openAiAccountName"], main_scope(deployment)) == "aoai-example"


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d.name)
def test_each_mode_deploys_the_vault_and_the_key_only_for_api_key(deployment: Deployment) -> None:
    api_key = auth_mode(deployment) == "api-key"
    account_named = "azureOpenAiResourceId" in deployment.params
    assert module_deploys(INFRA / "modules" / "keyvault.bicep", deployment) == api_key
    assert module_deploys(INFRA / "modules" / "openai-key.bicep", deployment) == (api_key and account_named)
    assert module_deploys(OPENAI_ACCESS_MODULE, deployment) == (not api_key and account_named)
    outputs = {name: evaluate(output["value"], main_scope(deployment)) for name, output in parsed(MAIN)["outputs"].items()}
    assert outputs["AZURE_OPENAI_AUTH"] == auth_mode(deployment)
    assert outputs["AZURE_OPENAI_KEY_SOURCE"] == ("account" if api_key and account_named else "none")
    for name in ("AZURE_KEY_VAULT_NAME", "AZURE_KEY_VAULT_URL"):
        assert (outputs[name] == "") == (not api_key), f"{name}: {outputs[name]!r}"


@pytest.mark.parametrize("deployment", DEPLOYMENTS + EXTRA_DEPLOYMENTS, ids=lambda d: d.name)
def test_nothing_reads_a_module_that_does_not_deploy(deployment: Deployment) -> None:
    """ARM fails a deployment that reads the outputs of a module it skipped; each mode reads only its own."""
    scope = main_scope(deployment)
    instances = module_instances(deployment)
    read: list[tuple[str, Any]] = []
    for instance in instances:
        if instance.deploys:
            read += [(f"{instance.label}.params.{param}", evaluate(value, instance.main)) for param, value in instance.body["params"].items()]
    read += [(f"output {name}", evaluate(output["value"], scope)) for name, output in parsed(MAIN)["outputs"].items()]
    deploys = {instance.label: instance.deploys for instance in instances}
    for where, value in read:
        for unknown in unknowns(value):
            if ".outputs." in unknown.text:
                label = unknown.text.split(".", 1)[0]
                assert deploys[label], f"{where} reads {unknown.text}, but {label} does not deploy"


def sample_value(value: Any) -> Any:
    """A module output stands for a URL of its own (the endpoints and the vault's URI are all URLs)."""
    return value.as_url() if isinstance(value, Unknown) else value


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d.name)
def test_app_settings_of_each_mode_are_what_the_code_accepts(deployment: Deployment) -> None:
    """The template's app settings, read by shared.settings: the mode is the one deployed, entra reads no vault."""
    from shared.settings import Settings

    values = app_settings_of(deployment)
    mode = auth_mode(deployment)
    assert values["AZURE_OPENAI_AUTH"] == mode
    if mode == "entra":
        assert values["KEY_VAULT_URL"] == ""
    else:
        assert isinstance(values["KEY_VAULT_URL"], Unknown) and values["KEY_VAULT_URL"].text == "keyVault.outputs.uri"
    settings = Settings.from_environ({name: sample_value(value) for name, value in values.items()})
    assert settings.auth == mode
    assert (settings.key_vault_url is None) == (mode == "entra")


def test_auth_parameter_takes_the_codes_modes_and_default() -> None:
    from shared.settings import AUTH_MODES, SETTING_DEFAULTS

    for path in (MAIN, FUNCTION_APP_MODULE):
        parameter = parsed(path)["parameters"]["azureOpenAiAuth"]
        allowed = [d["argument"] for d in parameter["decorators"] if d["type"] == "allowed"]
        assert allowed == [list(AUTH_MODES)], f"{path.name}: {allowed}"
    assert parsed(MAIN)["parameters"]["azureOpenAiAuth"]["default"] == SETTING_DEFAULTS["AZURE_OPENAI_AUTH"]
    assert app_settings()["AZURE_OPENAI_AUTH"] == "azureOpenAiAuth"
    assert module_call(FUNCTION_APP_MODULE)["azureOpenAiAuth"] == "azureOpenAiAuth"


def test_evaluate_refuses_what_pycep_may_have_misread(tmp_path: Path) -> None:
    """pycep reads `!a && b` as `!(a && b)` and `a == b && c` as `a == (b && c)`: evaluate must not trust those."""
    copy = tmp_path / "precedence.bicep"
    copy.write_text(
        "param a bool = false\nparam b bool = false\nparam m string = 'x'\n"
        "var notFirst = !a && b\nvar equalsFirst = m == 'x' && b\nvar andFirst = b && m == 'x'\n",
        encoding="utf-8",
    )
    scope = Scope(copy, DEPLOYMENTS[0], caller={})
    variables = parsed(copy)["variables"]
    for misread in ("notFirst", "equalsFirst"):
        with pytest.raises(AssertionError, match="precedence"):
            evaluate(variables[misread]["value"], scope)
    assert evaluate(variables["andFirst"]["value"], scope) is False


# --- locked-down properties ------------------------------------------------------------------


def single(path: Path, resource_type: str) -> dict[str, Any]:
    found = resources_of_type(path, resource_type)
    assert len(found) == 1, f"{path.name}: expected one {resource_type}, found {len(found)}"
    return resource_body(next(iter(found.values())))


def test_storage_account_is_entra_only_and_tls_1_2() -> None:
    storage = single(STORAGE_MODULE, "Microsoft.Storage/storageAccounts")["properties"]
    assert storage["allowSharedKeyAccess"] is False
    assert storage["minimumTlsVersion"] == "TLS1_2"
    assert storage["allowBlobPublicAccess"] is False
    assert storage["supportsHttpsTrafficOnly"] is True
    container = single(STORAGE_MODULE, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert container["properties"]["publicAccess"] == "None"


def test_key_vault_is_rbac_only_with_soft_delete_and_purge_protection_by_default() -> None:
    keyvault = INFRA / "modules" / "keyvault.bicep"
    vault = single(keyvault, "Microsoft.KeyVault/vaults")["properties"]
    assert vault["enableRbacAuthorization"] is True
    assert vault["enableSoftDelete"] is True
    purge = vault["enablePurgeProtection"]["operator"]["operands"]
    assert (purge["condition"], purge["true_value"], purge["false_value"]) == ("enablePurgeProtection", True, None)
    assert parsed(keyvault)["parameters"]["enablePurgeProtection"]["default"] is True
    assert parsed(MAIN)["parameters"]["keyVaultEnablePurgeProtection"]["default"] is True
    assert module_call(keyvault)["enablePurgeProtection"] == "keyVaultEnablePurgeProtection"
    assert module_call(keyvault)["publicNetworkAccess"] == "keyVaultPublicNetworkAccess"


def test_function_app_is_https_only_ftp_off_tls_1_2_on_flex_consumption() -> None:
    site = function_app()
    assert site["properties"]["httpsOnly"] is True
    # FTP is off through the publishing-credential policies; Flex refuses siteConfig.ftpsState.
    assert "ftpsState" not in site["properties"]["siteConfig"]
    policies = resources_of_type(FUNCTION_APP_MODULE, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert sorted(resource_body(policy)["name"] for policy in policies.values()) == ["ftp", "scm"]
    for policy in policies.values():
        assert resource_body(policy)["properties"] == {"allow": False}
        # ARM answers "The parameter location has an invalid value" without it (bicep-types-az#1317).
        assert resource_body(policy)["location"] == "location"
    assert site["properties"]["siteConfig"]["minTlsVersion"] == "1.2"
    assert site["identity"]["type"] == "UserAssigned"
    plan = single(FUNCTION_APP_MODULE, "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    deployment = site["properties"]["functionAppConfig"]["deployment"]["storage"]
    assert deployment["authentication"]["type"] == "UserAssignedIdentity"


def test_monitoring_refuses_local_auth() -> None:
    monitoring = INFRA / "modules" / "monitoring.bicep"
    assert single(monitoring, "Microsoft.Insights/components")["properties"]["DisableLocalAuth"] is True


def test_outputs_carry_no_secret() -> None:
    secure_params = {
        name
        for name, param in parsed(MAIN)["parameters"].items()
        if any(decorator["type"] == "secure" for decorator in param["decorators"])
    }
    assert "azureOpenAiApiKey" in secure_params
    for path in BICEP_FILES:
        for name, output in parsed(path)["outputs"].items():
            text = json.dumps(output["value"])
            assert '"func_name"' not in text, f"{path.name}: output {name} calls list*() or getSecret()"
            assert not any(f'"{param}"' in text for param in secure_params), f"{path.name}: output {name} leaks a secure param"
            assert "apiKey" not in text, f"{path.name}: output {name} touches the api-key"


def test_outputs_azd_and_users_need() -> None:
    outputs = set(parsed(MAIN)["outputs"])
    needed = {
        "AZURE_FUNCTION_APP_NAME",
        "AZURE_FUNCTION_APP_URL",
        "AZURE_KEY_VAULT_URL",
        "AZURE_KEY_VAULT_NAME",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_OPENAI_KEY_SECRET_NAME",
        "CANCEL_REQUESTS_QUEUE",
        "CANCEL_RESULTS_QUEUE",
    }
    assert needed <= outputs, f"missing outputs: {needed - outputs}"


# --- azd wiring ------------------------------------------------------------------------------


def test_parameters_file_uses_azd_substitutions() -> None:
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    values = {name: entry["value"] for name, entry in parameters.items()}
    assert values["environmentName"] == "${AZURE_ENV_NAME}"
    assert values["location"] == "${AZURE_LOCATION}"
    assert values["principalId"] == "${AZURE_PRINCIPAL_ID}"
    assert values["azureOpenAiAuth"] == "${AZURE_OPENAI_AUTH=api-key}"  # the code's default, as azd writes it
    main_params = parsed(MAIN)["parameters"]
    assert set(values) <= set(main_params), f"parameters main.bicep lacks: {set(values) - set(main_params)}"
    assert "azureOpenAiApiKey" not in values, "keep the api-key out of azd's plain-text .env"
    # An array parameter from a JSON env var: azd parses the substituted string (Azure/azure-dev#6694).
    assert values["azureOpenAiResources"] == "${AZURE_OPENAI_RESOURCES=[]}"


def test_azure_yaml_declares_the_python_function_service() -> None:
    text = (REPO / "azure.yaml").read_text(encoding="utf-8")
    services = text.split("services:", 1)[1]
    assert re.search(r"^  api:\s*$", services, re.MULTILINE)
    assert re.search(r"^    language: python\s*$", services, re.MULTILINE)
    assert re.search(r"^    host: function\s*$", services, re.MULTILINE)
    # azd finds the app to deploy to by this tag.
    assert "'azd-service-name': serviceName" in FUNCTION_APP_MODULE.read_text()
    assert parsed(FUNCTION_APP_MODULE)["parameters"]["serviceName"]["default"] == "api"



# --- what Azure refuses that the compiler would not ------------------------------------------


def test_maximum_instance_count_is_bounded_to_what_flex_accepts() -> None:
    """Flex Consumption: the lowest maximum instance count is 40, the highest 1000 (Flex Consumption plan docs)."""
    for path in (MAIN, FUNCTION_APP_MODULE):
        parameter = parsed(path)["parameters"]["maximumInstanceCount"]
        bounds = {decorator["type"]: decorator.get("argument") for decorator in parameter["decorators"]}
        assert (bounds.get("min_value"), bounds.get("max_value")) == (40, 1000), f"{path.name}: {bounds}"
        assert 40 <= parameter["default"] <= 1000


def conditional_names(path: Path) -> set[str]:
    """Resources and modules deployed `if (...)`, existing ones included (a loop's null condition is not one)."""
    doc = parsed(path)
    return {
        name
        for name, declaration in {**doc["resources"], **doc["modules"]}.items()
        if isinstance(declaration["config"], dict) and declaration["config"].get("condition") is not None
    }


def test_conditional_resources_and_modules_are_read_with_the_non_null_assertion() -> None:
    """Reading `x.outputs` / `x.properties` / `x.listKeys()` of a conditional `x` warns BCP318; `x!.` does not."""
    asserted = 0
    for path in BICEP_FILES:
        # Comments out (a `//` after a space or at the start; `https://` stays).
        code = "\n".join(re.sub(r"(^|\s)//.*$", "", line) for line in path.read_text(encoding="utf-8").splitlines())
        for name in conditional_names(path):
            bare = re.findall(rf"\b{name}(?:\[[^\]]*\])?\.(?:outputs|properties|list\w*\(|id\b|name\b)", code)
            assert not bare, f"{path.name}: {name} is conditional; read it as {name}!.{bare[0].split('.', 1)[1]}"
            asserted += len(re.findall(rf"\b{name}(?:\[[^\]]*\])?!\.", code))
    assert asserted >= 5, "expected the openAiKey modules, the openAiAccess loop and the openAi account read with `!`"


def test_openai_resource_id_shape_is_checked_before_its_parts_are_read() -> None:
    """`split(id, '/')[i]` on a malformed id fails on an index: main.bicep checks the shape first.

    A malformed id reaches the openai-key module as azureOpenAiResourceIdIsWellFormed = false, which
    its `@allowed([true])` refuses, naming the parameter (fail() would be plainer, but the checkov
    release pinned in the Makefile cannot parse it).
    """
    parts = parsed(MAIN)["variables"]["openAiIdParts"]["value"]["operator"]["operands"]
    assert (parts["condition"], parts["true_value"]) == ("openAiIdIsWellFormed", "openAiIdSegments")
    assert parts["false_value"] == [""] * 9  # nine empty parts: no index read can fail
    text = MAIN.read_text(encoding="utf-8")
    for line in text.splitlines():
        if "openAiIdSegments[" in line:  # every index read stands behind the nine-segment test
            assert "openAiIdHasNineSegments ?" in line, line
    assert not re.search(r"split\([^)]*\)\s*\[", text), "index a split() only through the checked openAiIdParts"
    module = INFRA / "modules" / "openai-key.bicep"
    call = module_call(module)
    assert "openAiIdParts" in json.dumps(call["openAiSubscriptionId"]) + json.dumps(call["openAiAccountName"])
    assert "openAiIdIsWellFormed" in json.dumps(call["azureOpenAiResourceIdIsWellFormed"])
    guard = parsed(module)["parameters"]["azureOpenAiResourceIdIsWellFormed"]
    assert {"type": "allowed", "argument": [True]} in guard["decorators"], guard["decorators"]


@pytest.mark.parametrize(
    ("resource_id", "well_formed"),
    [
        (OPENAI_ACCOUNT_ID, True),
        (OPENAI_ACCOUNT_ID.replace("resourceGroups", "RESOURCEGROUPS"), True),  # ARM ids are case-insensitive
        (OPENAI_ACCOUNT_ID + "/", False),
        (OPENAI_ACCOUNT_ID.lstrip("/"), False),
        (OPENAI_ACCOUNT_ID.replace("resourceGroups", "resourceGroup"), False),
        (OPENAI_ACCOUNT_ID.replace("Microsoft.CognitiveServices", "Microsoft.MachineLearningServices"), False),
        (OPENAI_ACCOUNT_ID.replace("/accounts/", "/account/"), False),
        (OPENAI_ACCOUNT_ID.replace("/rg-openai/", "//"), False),
        (OPENAI_ACCOUNT_ID.replace("aoai-example", ""), False),
        ("aoai-example", False),
    ],
)
@pytest.mark.parametrize("mode", ["api-key", "entra"])
def test_a_malformed_openai_resource_id_is_refused_by_the_guard_not_by_an_empty_scope(
    resource_id: str, well_formed: bool, mode: str
) -> None:
    """Each module that reads the account gets azureOpenAiResourceIdIsWellFormed; entra's scope never has an empty part."""
    deployment = Deployment(resource_id, {"azureOpenAiAuth": mode, "azureOpenAiResourceId": resource_id})
    scope = main_scope(deployment)
    assert evaluate("openAiIdIsWellFormed", scope) is well_formed
    module_file = INFRA / "modules" / ("openai-key.bicep" if mode == "api-key" else "openai-access.bicep")
    assert module_deploys(module_file, deployment)
    assert evaluate(module_call(module_file)["azureOpenAiResourceIdIsWellFormed"], scope) is well_formed
    guard = parsed(module_file)["parameters"]["azureOpenAiResourceIdIsWellFormed"]
    assert {"type": "allowed", "argument": [True]} in guard["decorators"], guard["decorators"]
    if mode == "entra":
        where = main_module(OPENAI_ACCESS_MODULE)["config"]["config"]["scope"]["function"]["parameters"]
        parts = [evaluate(part, scope) for part in where.values()]
        assert all(isinstance(part, Unknown) or part for part in parts), f"an empty scope part: {parts}"
        assert all(isinstance(part, str) for part in parts) == well_formed  # else our own subscription and group


def test_readme_says_to_register_the_microsoft_app_provider() -> None:
    """Flex app creation can fail while Microsoft.App is not registered (Flex Consumption plan docs)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    before = readme.split("### Before you start", 1)[1].split("\n### ", 1)[0]
    assert "az provider register --namespace Microsoft.App" in before


# --- host fidelity: the worker's thread pool, HTTP concurrency, the records' time-to-live ------


def test_worker_thread_pool_holds_every_invocation_one_instance_may_run() -> None:
    """PYTHON_THREADPOOL_THREAD_COUNT = queue batchSize + newBatchThreshold + HTTP per-instance concurrency.

    Unset, the worker runs sync functions on ThreadPoolExecutor's default min(32, cpu + 4) threads
    (azure-functions-python-worker, azure_functions_worker/dispatcher.py, Dispatcher._get_sync_tp_max_workers:
    no limit from Python 3.9 on), i.e. 5 on a 1-vCPU Flex instance, while the queue trigger alone may
    hold batchSize + newBatchThreshold messages at once.
    """
    queues = json.loads((REPO / "host.json").read_text(encoding="utf-8"))["extensions"]["queues"]
    scale = function_app()["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    caller = module_call(FUNCTION_APP_MODULE)
    per_instance = int(resolve(scale["triggers"]["http"]["perInstanceConcurrency"], FUNCTION_APP_MODULE, caller))
    threads = int(app_setting_value("PYTHON_THREADPOOL_THREAD_COUNT"))
    assert per_instance == 8
    assert threads == queues["batchSize"] + queues["newBatchThreshold"] + per_instance == 32


def test_results_ttl_is_the_codes_default() -> None:
    """Records never expire unless an operator says so (CONTRACT: RESULTS_TTL_SECONDS, default -1)."""
    assert app_setting_value("RESULTS_TTL_SECONDS") == code_defaults().get("RESULTS_TTL_SECONDS", "-1")


def test_app_identity_may_send_records_to_the_results_queue() -> None:
    """The app writes records itself (azure-storage-queue send_message) with AZURE_CLIENT_ID's identity.

    Storage Queue Data Contributor on the account, or Message Sender / Contributor on the results
    queue, allows the send; the identity the SDK uses must be the one the role is granted to.
    """
    body = {name: resource_body(r) for name, r in resources_of_type(RBAC_MODULE, "Microsoft.Authorization/roleAssignments").items()}
    roles = role_variables()
    granted = {
        (roles[b["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]], b["scope"])
        for b in body.values()
        if b["properties"]["principalId"] == "appPrincipalId"
    }
    allows_send = {
        ("Storage Queue Data Contributor", "storage"),
        ("Storage Queue Data Contributor", "resultsQueue"),
        ("Storage Queue Data Message Sender", "resultsQueue"),
    }
    assert granted & allows_send, f"the app's roles {granted} do not allow sending to the results queue"
    assert app_settings()["AZURE_CLIENT_ID"] == "identityClientId"
    assert "clientId" in json.dumps(module_call(FUNCTION_APP_MODULE)["identityClientId"])
    assert "principalId" in json.dumps(module_call(RBAC_MODULE)["appPrincipalId"])


# --- schema: every property path set exists at the resource's API version ---------------------
#
# The schemas are the request-body models of the Azure SDK for Python management packages, whose
# `_attribute_map` gives each attribute's JSON path ("properties.siteConfig") and type, and whose
# `_validation` marks the read-only ones. requirements-dev.txt pins releases that carry the API
# versions below; a package with one API version names it in its client configuration.

RESOURCE_SCHEMAS = {
    ("Microsoft.Resources/resourceGroups", "2024-11-01"): ("azure.mgmt.resource.resources.v2024_11_01", "ResourceGroup"),
    ("Microsoft.ManagedIdentity/userAssignedIdentities", "2023-01-31"): ("azure.mgmt.msi.v2023_01_31", "Identity"),
    ("Microsoft.OperationalInsights/workspaces", "2025-07-01"): ("azure.mgmt.loganalytics", "Workspace"),
    ("Microsoft.Insights/components", "2020-02-02"): (
        "azure.mgmt.applicationinsights.v2020_02_02",
        "ApplicationInsightsComponent",
    ),
    ("Microsoft.Storage/storageAccounts", "2023-05-01"): ("azure.mgmt.storage.v2023_05_01", "StorageAccountCreateParameters"),
    ("Microsoft.Storage/storageAccounts/blobServices", "2023-05-01"): ("azure.mgmt.storage.v2023_05_01", "BlobServiceProperties"),
    ("Microsoft.Storage/storageAccounts/blobServices/containers", "2023-05-01"): ("azure.mgmt.storage.v2023_05_01", "BlobContainer"),
    ("Microsoft.Storage/storageAccounts/queueServices", "2023-05-01"): ("azure.mgmt.storage.v2023_05_01", "QueueServiceProperties"),
    ("Microsoft.Storage/storageAccounts/queueServices/queues", "2023-05-01"): ("azure.mgmt.storage.v2023_05_01", "StorageQueue"),
    ("Microsoft.KeyVault/vaults", "2023-07-01"): ("azure.mgmt.keyvault.v2023_07_01", "VaultCreateOrUpdateParameters"),
    ("Microsoft.KeyVault/vaults/secrets", "2023-07-01"): ("azure.mgmt.keyvault.v2023_07_01", "SecretCreateOrUpdateParameters"),
    ("Microsoft.Web/serverfarms", "2024-04-01"): ("azure.mgmt.web.v2024_04_01", "AppServicePlan"),
    ("Microsoft.Web/sites", "2024-04-01"): ("azure.mgmt.web.v2024_04_01", "Site"),
    ("Microsoft.Web/sites/basicPublishingCredentialsPolicies", "2024-04-01"): (
        "azure.mgmt.web.v2024_04_01",
        "CsmPublishingCredentialsPoliciesEntity",
    ),
    ("Microsoft.Authorization/roleAssignments", "2022-04-01"): (
        "azure.mgmt.authorization.v2022_04_01",
        "RoleAssignmentCreateParameters",
    ),
    ("Microsoft.Consumption/budgets", "2021-10-01"): ("azure.mgmt.consumption", "Budget"),
    ("Microsoft.Insights/actionGroups", "2023-01-01"): ("azure.mgmt.monitor", "ActionGroupResource"),
}
SINGLE_VERSION_PACKAGES = {
    "azure.mgmt.loganalytics": "LogAnalyticsManagementClientConfiguration",
    "azure.mgmt.consumption": "ConsumptionManagementClientConfiguration",
}
# Packages whose operation groups carry different API versions: the module of the group that sends the
# resource type names its version as the `api-version` default.
OPERATION_VERSION_MODULES = {
    "Microsoft.Insights/actionGroups": "azure.mgmt.monitor.operations._action_groups_operations",
}

# Bicep's own keywords in a resource body, not ARM properties (`name` is the URL's last segment,
# which the SDK models mark read-only).
BICEP_KEYWORDS = {"name", "parent", "scope", "dependsOn"}

# Properties ARM needs that the published API spec leaves out, each with its source.
SCHEMA_GAPS = {
    ("Microsoft.Web/sites/basicPublishingCredentialsPolicies", "location"): (
        'ARM answers "The parameter location has an invalid value" without it; the spec omits it '
        "(bicep-types-az#1317, #1529, #1571; AVM's basic-publishing-credentials-policy sets it)"
    ),
}


def schema_model(package: str, model_name: str) -> Any:
    import importlib

    try:
        models = importlib.import_module(f"{package}.models")
    except ImportError as err:
        pytest.fail(f"{package} is missing ({err}): `make install` installs requirements-dev.txt")
    return getattr(models, model_name)


def schema_tree(model: Any) -> dict[str, Any]:
    """JSON shape of a model: nested dicts down to (type name, read-only) leaves."""
    tree: dict[str, Any] = {}
    for attribute, spec in model._attribute_map.items():
        segments = [part.replace("\\.", ".") for part in re.split(r"(?<!\\)\.", spec["key"])]
        node = tree
        for segment in segments[:-1]:
            node = node.setdefault(segment, {})
        readonly = bool(model._validation.get(attribute, {}).get("readonly"))
        node[segments[-1]] = (spec["type"], readonly)
    return tree


def schema_errors(value: Any, node: Any, path: str, models: Any) -> list[str]:
    """Where `value` (a pycep object or array literal) sets a path that `node` does not have."""
    if is_expression(value):
        return []  # a computed value: its shape is not known here
    if isinstance(node, tuple):
        type_name, _ = node
        if type_name.startswith("[") and isinstance(value, list):
            return [e for i, item in enumerate(value) for e in schema_errors(item, (type_name[1:-1], False), f"{path}[{i}]", models)]
        if type_name.startswith("{") and isinstance(value, dict):
            return [e for key, item in value.items() for e in schema_errors(item, (type_name[1:-1], False), f"{path}.{key}", models)]
        model = getattr(models, type_name, None)
        if isinstance(model, type) and hasattr(model, "_attribute_map"):
            return schema_errors(value, schema_tree(model), path, models)
        return []  # a primitive: any literal or reference
    if not isinstance(value, dict):
        return []  # a reference to a param or var standing for the whole object
    errors = []
    for key, child in value.items():
        where = f"{path}.{key}" if path else key
        if key not in node:
            errors.append(f"{where}: no such property")
        elif isinstance(node[key], tuple) and node[key][1]:
            errors.append(f"{where}: read-only")
        else:
            errors += schema_errors(child, node[key], where, models)
    return errors


def resource_schema_errors(resource: dict[str, Any]) -> list[str]:
    key = (resource["type"], resource["api_version"])
    assert key in RESOURCE_SCHEMAS, f"{key[0]}@{key[1]} has no schema in RESOURCE_SCHEMAS"
    package, model_name = RESOURCE_SCHEMAS[key]
    model = schema_model(package, model_name)
    models = __import__(f"{package}.models", fromlist=["models"])
    tree = schema_tree(model)
    body = {
        name: value
        for name, value in resource_body(resource).items()
        if name not in BICEP_KEYWORDS and (resource["type"], name) not in SCHEMA_GAPS
    }
    return schema_errors(body, tree, "", models)


def deployed_resources(path: Path, document: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    resources = (document or parsed(path))["resources"]
    return {name: resource for name, resource in resources.items() if not resource["existing"]}


def test_schema_table_covers_every_deployed_resource_at_a_version_its_package_carries() -> None:
    used = {(r["type"], r["api_version"]) for path in BICEP_FILES for r in deployed_resources(path).values()}
    assert used <= set(RESOURCE_SCHEMAS), f"no schema for {sorted(used - set(RESOURCE_SCHEMAS))}"
    assert set(RESOURCE_SCHEMAS) <= used, f"schemas for types the templates no longer use: {set(RESOURCE_SCHEMAS) - used}"
    import importlib
    import inspect

    for (resource_type, version), (package, model_name) in RESOURCE_SCHEMAS.items():
        schema_model(package, model_name)
        if package in SINGLE_VERSION_PACKAGES:
            configuration = getattr(importlib.import_module(f"{package}._configuration"), SINGLE_VERSION_PACKAGES[package])
            carried = configuration(credential=object(), subscription_id="0").api_version
            assert carried == version, f"{package} carries {carried}, the template pins {resource_type}@{version}"
        elif resource_type in OPERATION_VERSION_MODULES:
            source = inspect.getsource(importlib.import_module(OPERATION_VERSION_MODULES[resource_type]))
            defaults = set(re.findall(r'_params\.pop\("api-version", "([0-9-]+)"\)', source))
            assert defaults == {version}, f"{package} sends {resource_type} at {defaults}, the template pins {version}"
        else:
            assert package.endswith("v" + version.replace("-", "_")), f"{package} is not {resource_type}@{version}"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_property_set_exists_in_the_schema_of_its_api_version(path: Path) -> None:
    errors = [
        f"{name} ({resource['type']}@{resource['api_version']}): {error}"
        for name, resource in deployed_resources(path).items()
        for error in resource_schema_errors(resource)
    ]
    assert not errors, f"{path.name}:\n" + "\n".join(errors)


def test_schema_gaps_are_still_gaps() -> None:
    """An exception stays only while the schema still lacks the property (else it would hide a typo)."""
    for (resource_type, name), _source in SCHEMA_GAPS.items():
        package, model_name = next(v for (t, _), v in RESOURCE_SCHEMAS.items() if t == resource_type)
        assert name not in schema_tree(schema_model(package, model_name)), f"{resource_type} now has {name}"


def schema_errors_of_copy(tmp_path: Path, module: Path, edits: list[tuple[str, str]]) -> list[str]:
    text = module.read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text, f"{old!r} is not in {module.name}: update this test"
        text = text.replace(old, new, 1)
    copy = tmp_path / module.name
    copy.write_text(text, encoding="utf-8")
    document = BicepParser().parse(file_path=copy)
    document.setdefault("resources", {})
    return [error for resource in deployed_resources(copy, document).values() for error in resource_schema_errors(resource)]


def test_schema_check_catches_a_typo_at_any_depth_and_a_read_only_property(tmp_path: Path) -> None:
    errors = schema_errors_of_copy(
        tmp_path,
        FUNCTION_APP_MODULE,
        [
            ("httpsOnly: true", "httpsOnyl: true"),
            ("minTlsVersion: '1.2'", "minTlsVerison: '1.2'"),
            ("perInstanceConcurrency: httpPerInstanceConcurrency", "perInstanceConcurency: httpPerInstanceConcurrency"),
            ("serverFarmId: plan.id", "serverFarmId: plan.id\n    defaultHostName: 'example.net'"),
        ],
    )
    assert sorted(errors) == [
        "properties.defaultHostName: read-only",
        "properties.functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurency: no such property",
        "properties.httpsOnyl: no such property",
        "properties.siteConfig.minTlsVerison: no such property",
    ]


def test_schema_check_catches_a_typo_in_another_package(tmp_path: Path) -> None:
    keyvault = INFRA / "modules" / "keyvault.bicep"
    errors = schema_errors_of_copy(tmp_path, keyvault, [("enableRbacAuthorization: true", "enableRbacAuthorisation: true")])
    assert errors == ["properties.enableRbacAuthorisation: no such property"]
    # A child resource that has no location of its own.
    queue_service = "resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {\n  parent: storage\n"
    storage = schema_errors_of_copy(tmp_path, STORAGE_MODULE, [(queue_service, queue_service + "  location: location\n")])
    assert storage == ["location: no such property"]


# --- extra resources: azureOpenAiResources -> AZURE_OPENAI_RESOURCES -------------------------


def extras_of(deployment: Deployment) -> list[dict[str, Any]]:
    return deployment.params.get("azureOpenAiResources", [])


def instances_of(deployment: Deployment, module_file: Path) -> dict[str, ModuleInstance]:
    """The loop's instances that deploy, by the extra resource's name."""
    symbol, _ = main_module_loop(module_file)
    extras = extras_of(deployment)
    return {
        extras[instance.index]["name"]: instance
        for instance in module_instances(deployment)
        if instance.symbol == symbol and instance.deploys
    }


@pytest.mark.parametrize("deployment", EXTRA_DEPLOYMENTS, ids=lambda d: d.name)
def test_extra_resources_setting_is_what_the_code_accepts(deployment: Deployment) -> None:
    """The template's AZURE_OPENAI_RESOURCES, read by shared.settings: each resource, its endpoint, auth, key and version."""
    from shared.settings import DEFAULT_RESOURCE, Settings

    values = app_settings_of(deployment)
    raw = values["AZURE_OPENAI_RESOURCES"]
    assert isinstance(raw, str) and json.loads(raw), raw
    settings = Settings.from_environ({name: sample_value(value) for name, value in values.items()})
    has_default = "azureOpenAiEndpoint" in deployment.params or "azureOpenAiResourceId" in deployment.params
    extras = extras_of(deployment)
    assert set(settings.resources) == {r["name"] for r in extras} | ({DEFAULT_RESOURCE} if has_default else set())
    for extra in extras:
        resource = settings.resources[extra["name"]]
        assert resource.auth == extra["auth"]
        assert resource.api_version == extra.get("apiVersion", settings.api_version)
        if "endpoint" in extra:
            assert resource.endpoint == extra["endpoint"].rstrip("/")
        else:  # the account's custom subdomain, from the module that read the account
            module = "extraOpenAiKeys" if extra["auth"] == "api-key" else "extraOpenAiAccess"
            index = extras.index(extra)
            assert resource.endpoint == Unknown(f"{module}[{index}].outputs.endpoint").as_url().rstrip("/")
        if extra["auth"] == "api-key":
            assert resource.key_secret_name == f"azure-openai-api-key-{extra['name']}"
    # Key Vault is there, and named to the app, exactly when some resource uses an api-key.
    uses_key = any(r.auth == "api-key" for r in settings.resources.values())
    assert module_deploys(INFRA / "modules" / "keyvault.bicep", deployment) == uses_key
    assert (settings.key_vault_url is not None) == uses_key
    assert (values["KEY_VAULT_URL"] == "") == (not uses_key)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d.name)
def test_no_extra_resources_leaves_the_setting_empty(deployment: Deployment) -> None:
    """An empty list (the default): AZURE_OPENAI_RESOURCES is "", which the app reads as unset; nothing per resource."""
    from shared.settings import DEFAULT_RESOURCE, Settings

    values = app_settings_of(deployment)
    assert values["AZURE_OPENAI_RESOURCES"] == ""
    assert set(Settings.from_environ({n: sample_value(v) for n, v in values.items()}).resources) == {DEFAULT_RESOURCE}
    assert not instances_of(deployment, INFRA / "modules" / "openai-key.bicep")
    assert not instances_of(deployment, OPENAI_ACCESS_MODULE)


@pytest.mark.parametrize("deployment", EXTRA_DEPLOYMENTS, ids=lambda d: d.name)
def test_each_extra_resource_gets_its_key_copy_or_its_role(deployment: Deployment) -> None:
    """api-key with an account: key1 into Key Vault as azure-openai-api-key-<name>. entra with an account:
    Cognitive Services OpenAI Contributor for the app's identity on that account. An endpoint: neither."""
    extras = extras_of(deployment)
    keyed = {r["name"]: r for r in extras if r["auth"] == "api-key" and "resourceId" in r}
    keyless = {r["name"]: r for r in extras if r["auth"] == "entra" and "resourceId" in r}

    copies = instances_of(deployment, INFRA / "modules" / "openai-key.bicep")
    assert set(copies) == set(keyed)
    for name, instance in copies.items():
        params = {param: evaluate(value, instance.main) for param, value in instance.body["params"].items()}
        _, _, subscription, _, group, *_, account = keyed[name]["resourceId"].split("/")
        assert params["secretName"] == f"azure-openai-api-key-{name}"
        assert (params["openAiSubscriptionId"], params["openAiResourceGroupName"], params["openAiAccountName"]) == (
            subscription, group, account
        )
        assert params["azureOpenAiResourceIdIsWellFormed"] is True
        assert params["keyVaultName"].text == "keyVault.outputs.name"
        assert evaluate(instance.body["name"], instance.main) == f"openai-key-{name}"

    grants = [(instance, principal, role) for instance, principal, role in deployed_role_assignments(deployment)
              if instance.symbol == main_module_loop(OPENAI_ACCESS_MODULE)[0]]
    assert {extras[instance.index]["name"] for instance, _, _ in grants} == set(keyless)
    for instance, principal, role in grants:
        extra = extras[instance.index]
        _, _, subscription, _, group, *_, account = extra["resourceId"].split("/")
        assert (principal, role) == ("appPrincipalId", APP_OPENAI_ROLE)
        where = instance.body["scope"]["function"]
        assert where["type"] == "resource_group"
        where_values = {name: evaluate(arg, instance.main) for name, arg in where["parameters"].items()}
        assert where_values == {"subscription_id": subscription, "resource_group_name": group}
        assert evaluate(instance.body["params"]["openAiAccountName"], instance.main) == account
        assert accessor_path(instance.body["params"]["appPrincipalId"]) == "identity.outputs.principalId"
    # Least privilege still: one more principal never appears, no role beyond the known ones.
    assert deployed_roles(deployment) <= {("appPrincipalId", r) for r in APP_ROLES | {APP_KEY_ROLE, APP_OPENAI_ROLE}}


def validity(resources: list[dict[str, Any]]) -> tuple[bool, int]:
    """(main.bicep's verdict on the list, how many per-resource modules would deploy)."""
    deployment = Deployment("check", {**DEFAULT_ENDPOINT, "azureOpenAiResources": resources})
    valid = evaluate("extraOpenAiResourcesAreValid", main_scope(deployment))
    deployed = len(instances_of(deployment, INFRA / "modules" / "openai-key.bicep")) + len(
        instances_of(deployment, OPENAI_ACCESS_MODULE)
    )
    assert evaluate(module_call(FUNCTION_APP_MODULE)["azureOpenAiResourcesAreValid"], main_scope(deployment)) is valid
    return valid, deployed


@pytest.mark.parametrize(
    "name",
    ["sweden", "a", "x" * 40, "ncus-2", "0", "-", "x" * 41, "", "Sweden", "north_us", "north.us", "naïve", "default", "a b"],
)
def test_extra_resource_names_are_the_ones_the_app_accepts(name: str) -> None:
    """main.bicep refuses exactly the names shared.settings refuses (RESOURCE_NAME, and `default`)."""
    from shared.settings import DEFAULT_RESOURCE, RESOURCE_NAME

    app_accepts = bool(RESOURCE_NAME.fullmatch(name)) and name != DEFAULT_RESOURCE
    valid, deployed = validity([{"name": name, "resourceId": account_id("aoai-one"), "auth": "entra"}])
    assert valid is app_accepts
    assert deployed == (1 if app_accepts else 0)


@pytest.mark.parametrize(
    ("resources", "problem"),
    [
        ([EXTRA_RESOURCES[0], {**EXTRA_RESOURCES[2], "name": "sweden"}], "a name used twice"),
        ([{"name": "both", "resourceId": account_id("a"), "endpoint": "https://a.openai.azure.com/", "auth": "entra"}], "both"),
        ([{"name": "neither", "auth": "entra"}], "neither resourceId nor endpoint"),
        ([{"name": "bad-auth", "endpoint": "https://a.openai.azure.com/", "auth": "key"}], "an unknown auth"),
    ],
)
def test_a_bad_extra_resource_list_deploys_nothing_per_resource_and_is_refused(resources: list[dict[str, Any]], problem: str) -> None:
    """The function app module's azureOpenAiResourcesAreValid (@allowed([true])) refuses it; no key or role was made."""
    assert validity(resources) == (False, 0), problem
    guard = parsed(FUNCTION_APP_MODULE)["parameters"]["azureOpenAiResourcesAreValid"]
    assert {"type": "allowed", "argument": [True]} in guard["decorators"], guard["decorators"]
    assert validity(EXTRA_RESOURCES) == (True, 2)


@pytest.mark.parametrize("auth", ["api-key", "entra"])
def test_a_malformed_extra_resource_id_is_refused_by_the_guard_not_by_an_empty_scope(auth: str) -> None:
    """Like the default resource's: the module's azureOpenAiResourceIdIsWellFormed is false, its scope has no empty part."""
    bad = OPENAI_ACCOUNT_ID.replace("/accounts/", "/account/")
    deployment = Deployment("malformed", {**DEFAULT_ENDPOINT, "azureOpenAiResources": [{"name": "bad", "resourceId": bad, "auth": auth}]})
    module_file = INFRA / "modules" / ("openai-key.bicep" if auth == "api-key" else "openai-access.bicep")
    (instance,) = instances_of(deployment, module_file).values()
    assert evaluate(instance.body["params"]["azureOpenAiResourceIdIsWellFormed"], instance.main) is False
    if auth == "entra":
        parts = [evaluate(arg, instance.main) for arg in instance.body["scope"]["function"]["parameters"].values()]
        assert all(isinstance(part, Unknown) for part in parts), parts  # our own subscription and group


def test_the_outputs_name_the_extra_resources() -> None:
    deployment = EXTRA_DEPLOYMENTS[0]
    names = evaluate(parsed(MAIN)["outputs"]["AZURE_OPENAI_RESOURCE_NAMES"]["value"], main_scope(deployment))
    assert names == [r["name"] for r in EXTRA_RESOURCES]


# --- the guard (CONTRACT section 8): its settings, and the optional budget that pulls its kill switch ---------

BUDGET_ALERT_MODULE = INFRA / "modules" / "budget-alert.bicep"


def test_the_guard_runs_every_five_minutes_and_has_no_policy_by_default() -> None:
    settings = {entry["name"]: entry["value"] for entry in function_app()["properties"]["siteConfig"]["appSettings"]}
    assert resolve(module_call(FUNCTION_APP_MODULE)["guardSchedule"], MAIN) == "0 */5 * * * *"
    assert settings["GUARD_SCHEDULE"] == "guardSchedule" and settings["GUARD_POLICY"] == "guardPolicy"
    assert parsed(MAIN)["parameters"]["guardPolicy"]["default"] == ""


def test_the_budget_is_off_by_default_and_takes_one_to_five_thresholds() -> None:
    parameters = parsed(MAIN)["parameters"]
    assert parameters["budgetAmount"]["default"] == 0
    bounds = {d["type"]: d.get("argument") for d in parameters["budgetThresholds"]["decorators"]}
    assert (bounds["min_length"], bounds["max_length"]) == (1, 5)  # a budget takes at most five notifications
    (budget,) = resources_of_type(MAIN, "Microsoft.Consumption/budgets").values()
    assert budget["config"]["condition"] == "useBudget" and main_module(BUDGET_ALERT_MODULE)["config"]["condition"] == "useBudget"
    assert "budgetAmount > 0" in MAIN.read_text(encoding="utf-8")


def test_the_budgets_action_group_calls_the_budget_alert_route_in_the_common_alert_schema() -> None:
    group = single(BUDGET_ALERT_MODULE, "Microsoft.Insights/actionGroups")
    (receiver,) = group["properties"]["webhookReceivers"]
    assert receiver["useCommonAlertSchema"] is True
    route = receiver["serviceUri"].split("?")[0]
    assert route.endswith("/api/guard/budget-alert")  # function_app.py's route under host.json's routePrefix
    assert "functionKeys.default" in receiver["serviceUri"] and "?code=" in receiver["serviceUri"]
    assert json.loads((REPO / "host.json").read_text())["extensions"]["http"]["routePrefix"] == "api"
    text = MAIN.read_text(encoding="utf-8")
    assert "contactGroups" in text and "budgetAlert!.outputs.id" in text
