"""Indexing: the app's functions, triggers and bindings read from `function_app.app`, settings resolved.

The runner supports exactly what `function_app.py` uses: httpTrigger with its http `$return`,
queueTrigger, timerTrigger and queue outputs. Any other binding, a trigger it does not know, a
parameter without a binding (`func.Context` included) or an annotation the Python worker refuses
stops the runner at start-up with the function, the parameter and the feature named.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import threading
import typing
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import azure.functions as func
from azure.functions.meta import get_binding_registry

from devstack.runner.errors import RunnerError
from devstack.runner.host_config import resolve_setting_references, storage_connection_string
from devstack.runner.ncrontab import NcrontabSchedule
from devstack.runner.routes import RouteTemplate


@dataclass(frozen=True)
class QueueOutput:
    """A queue output binding, its queue name and connection resolved."""

    arg_name: str
    queue_name: str
    connection_string: str


@dataclass(frozen=True)
class LocalFunction:
    """One function of the app, as the runner invokes it."""

    name: str
    user_function: Callable[..., Any]
    trigger_type: str
    trigger_arg: str
    trigger: Mapping[str, Any]  # the trigger binding's dict representation, settings resolved
    queue_outputs: tuple[QueueOutput, ...]
    http_route: RouteTemplate | None = None
    http_methods: frozenset[str] | None = None  # None: every method
    auth_level: str = "function"
    trigger_queue: str = ""
    trigger_connection_string: str = ""
    has_return: bool = False  # a `$return` binding (an HTTP trigger's http output)
    timer_schedule: str = ""  # a timer trigger's six-field NCRONTAB expression


_indexed_apps: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
_index_lock = threading.Lock()


def app_functions(app: func.FunctionApp) -> list[Any]:
    """`app.get_functions()`, asked once per app object (azure-functions refuses a second indexing)."""
    with _index_lock:
        functions = _indexed_apps.get(app)
        if functions is None:
            functions = app.get_functions()
            _indexed_apps[app] = functions
        return functions


def index_functions(app: func.FunctionApp, settings: Mapping[str, str]) -> list[LocalFunction]:
    """Read every function's trigger and bindings from the app, resolving `%SETTING%` names."""
    indexed = []
    for function in app_functions(app):
        name = function.get_function_name()
        trigger_arg, trigger_type, trigger = "", "", {}
        outputs: list[QueueOutput] = []
        has_return = False
        for binding in function.get_bindings():
            spec = binding.get_dict_repr()
            kind, arg = spec["type"], spec["name"]
            where = f"function '{name}', binding '{arg}'"
            if kind in ("httpTrigger", "queueTrigger", "timerTrigger"):
                trigger_arg, trigger_type = arg, kind
                trigger = {key: _resolved(value, settings, where) for key, value in spec.items()}
            elif kind == "queue":
                outputs.append(
                    QueueOutput(
                        arg_name=arg,
                        queue_name=resolve_setting_references(spec["queueName"], settings, where=where),
                        connection_string=storage_connection_string(
                            spec.get("connection") or "AzureWebJobsStorage", settings
                        ),
                    )
                )
            elif kind == "http" and arg == "$return":
                has_return = True
            else:
                raise RunnerError(f"{where}: the local runner does not support '{kind}' bindings")
        if not trigger_type:
            raise RunnerError(
                f"function '{name}' has no trigger the local runner supports (httpTrigger, queueTrigger, timerTrigger)"
            )
        user_function = function.get_user_function()
        bound = {trigger_arg, *(output.arg_name for output in outputs)}
        unbound = [p for p in inspect.signature(user_function).parameters if p not in bound]
        if unbound:
            raise RunnerError(
                f"function '{name}': parameter(s) {', '.join(unbound)} have no binding the runner supports"
            )
        check_annotations(
            name,
            user_function,
            {trigger_arg: (trigger_type, False), **{output.arg_name: ("queue", True) for output in outputs}},
        )
        common = dict(
            name=name,
            user_function=user_function,
            trigger_type=trigger_type,
            trigger_arg=trigger_arg,
            trigger=trigger,
            queue_outputs=tuple(outputs),
            has_return=has_return,
        )
        if trigger_type == "httpTrigger":
            methods = trigger.get("methods")
            indexed.append(
                LocalFunction(
                    **common,
                    http_route=RouteTemplate.parse(trigger.get("route") or name, where=f"function '{name}'"),
                    http_methods=frozenset(_enum_value(m).upper() for m in methods) if methods else None,
                    auth_level=_enum_value(trigger.get("authLevel") or "function").lower(),
                )
            )
        elif trigger_type == "timerTrigger":
            schedule = str(trigger.get("schedule") or "")
            NcrontabSchedule.parse(schedule, where=f"function '{name}'")  # refused at start, as the host does
            indexed.append(LocalFunction(**common, timer_schedule=schedule))
        else:
            indexed.append(
                LocalFunction(
                    **common,
                    trigger_queue=trigger["queueName"],
                    trigger_connection_string=storage_connection_string(
                        trigger.get("connection") or "AzureWebJobsStorage", settings
                    ),
                )
            )
    return indexed


def check_annotations(
    function_name: str, user_function: Callable[..., Any], bindings: Mapping[str, tuple[str, bool]]
) -> None:
    """Refuse the parameter annotations the Python worker refuses to load (its `Registry.add_function`).

    `bindings` maps each parameter to its binding type and whether it is an output. In Azure such a
    function fails to load, and with the v2 programming model so does every function of the app.
    """
    try:
        hints = typing.get_type_hints(user_function)
    except Exception as err:  # noqa: BLE001 - whatever fails here fails in the worker too
        raise RunnerError(f"function '{function_name}': its annotations cannot be evaluated ({err})") from err
    registry = get_binding_registry()
    for arg, (binding_type, is_output) in bindings.items():
        if arg not in hints:
            continue
        annotation = hints[arg]
        where = f"function '{function_name}', parameter '{arg}: {_annotation_text(annotation)}'"
        annotated_output = annotation is func.Out or typing.get_origin(annotation) is func.Out
        if annotated_output != is_output:
            direction = "an output binding: annotate it func.Out[...]" if is_output else "an input: not func.Out"
            raise RunnerError(f"{where}: the binding is {direction}")
        py_type = typing.get_args(annotation)[0] if annotated_output else annotation
        # The worker accepts classes and typing generics (typing.List[str]) only, not list[str]
        # (azure-functions-python-worker issue 1034).
        if not isinstance(py_type, type) and not isinstance(py_type, typing._GenericAlias):  # type: ignore[attr-defined]
            raise RunnerError(
                f"{where}: the Python worker refuses to load this annotation; use typing.List[...] "
                "instead of list[...] (builtin generics are not supported by azure-functions-python-worker)"
            )
        if py_type in (str, bytes):
            continue
        converter = registry.get(binding_type)
        check = converter.check_output_type_annotation if is_output else converter.check_input_type_annotation
        if not check(py_type):
            raise RunnerError(f"{where}: the Python worker does not accept this type for a '{binding_type}' binding")


def _annotation_text(annotation: Any) -> str:
    return (
        annotation.__name__
        if isinstance(annotation, type)
        else repr(annotation).replace("azure.functions._abc.", "func.")
    )


def _resolved(value: Any, settings: Mapping[str, str], where: str) -> Any:
    return resolve_setting_references(value, settings, where=where) if isinstance(value, str) else value


def _enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))


def load_function_app(app_dir: Path) -> func.FunctionApp:
    """Import `function_app.py` from `app_dir`, as the Python worker does, and return its FunctionApp."""
    app_dir = app_dir.resolve()
    script = app_dir / "function_app.py"
    if not script.is_file():
        raise RunnerError(f"no function_app.py in {app_dir}")
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    module: ModuleType | None = sys.modules.get("function_app")
    if module is None or Path(getattr(module, "__file__", "")).resolve() != script:
        spec = importlib.util.spec_from_file_location("function_app", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["function_app"] = module
        spec.loader.exec_module(module)
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionApp)]
    if len(apps) != 1:
        raise RunnerError(f"{script} must define exactly one FunctionApp, found {len(apps)}")
    return apps[0]
