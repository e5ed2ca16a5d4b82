"""HTTP trigger routes: the part of ASP.NET Core's route templates our functions use, and a refusal for the rest.

The host maps each HTTP function to `<routePrefix>/<route>` (the function's name when it has no route)
and tries the routes in turn, the first match winning: host `src/WebJobs.Script.WebHost/
WebScriptHostHttpRoutesManager.cs` `InitializeHttpFunctionRoutes`, azure-webjobs-sdk-extensions
`src/WebJobs.Extensions.Http/Routing/WebJobsRouteBuilder.cs` `MapFunctionRoute` and `Build` (a
`RouteCollection`). The templates are ASP.NET Core's (`Microsoft.AspNetCore.Routing`
`Template/TemplateParser.cs`, `Template/TemplateMatcher.cs`). Kept here:

- literal segments, matched case-insensitively (`TemplateMatcher`, OrdinalIgnoreCase);
- a whole-segment parameter `{name}`, matching any non-empty segment;
- the `int` constraint `{name:int}` (`Constraints/IntRouteConstraint.cs`: an integer; its Int32 range
  is not checked here);
- an optional last segment `{name?}` (absent from `route_params` when the path stops before it);
- a trailing slash on the path.

Refused when the app is indexed, naming the feature: catch-all `{*name}`, default values `{name=x}`,
other constraints, several parameters or literal text and a parameter in one segment, an optional
segment that is not the last, and `{{`/`}}` escapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from devstack.runner.errors import RunnerError

_PARAMETER = re.compile(r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<constraint>[^}?]*))?(?P<optional>\?)?\}")
_INT = re.compile(r"-?\d+")
SUPPORTED_CONSTRAINTS = ("int",)


@dataclass(frozen=True)
class Segment:
    """One segment of a route: a literal, or a parameter with its constraint and whether it may be absent."""

    literal: str | None = None
    parameter: str | None = None
    constraint: str | None = None
    optional: bool = False

    def matches(self, text: str) -> bool:
        if self.literal is not None:
            return text.lower() == self.literal.lower()
        if self.constraint == "int":
            return _INT.fullmatch(text) is not None
        return text != ""


@dataclass(frozen=True)
class RouteTemplate:
    """An HTTP trigger route below the route prefix, as the host matches it."""

    template: str
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, template: str, *, where: str = "route") -> RouteTemplate:
        """Read a route template, or raise RunnerError naming the route feature the runner does not support."""
        texts = template.strip("/").split("/")
        segments = tuple(_segment(text, where=f"{where} '{template}'") for text in texts)
        if any(segment.optional for segment in segments[:-1]):
            raise RunnerError(f"{where} '{template}': only the last segment may be optional in the local runner")
        return cls(template, segments)

    def match(self, path: str) -> dict[str, str] | None:
        """The route parameters if `path` (below the route prefix, starting with `/`) matches."""
        parts = path[1:].split("/") if path.startswith("/") else path.split("/")
        if len(parts) > 1 and parts[-1] == "":
            parts = parts[:-1]  # a trailing slash
        segments = self.segments
        if len(parts) == len(segments) - 1 and segments[-1].optional:
            segments = segments[:-1]
        if len(parts) != len(segments):
            return None
        params: dict[str, str] = {}
        for segment, text in zip(segments, parts, strict=True):
            if not segment.matches(text):
                return None
            if segment.parameter is not None:
                params[segment.parameter] = text
        return params


def _segment(text: str, *, where: str) -> Segment:
    if "{" not in text and "}" not in text:
        if text == "":
            raise RunnerError(f"{where}: an empty segment ('//') is not a route")
        return Segment(literal=text)
    found = _PARAMETER.fullmatch(text)
    if found is None:
        raise RunnerError(
            f"{where}: the segment '{text}' uses a route feature the local runner does not support "
            f"({_feature(text)}); it supports literals, {{name}}, {{name:int}} and a last {{name?}}"
        )
    constraint = found.group("constraint")
    if constraint is not None and constraint not in SUPPORTED_CONSTRAINTS:
        raise RunnerError(
            f"{where}: the route constraint ':{constraint}' is not supported by the local runner "
            f"(it supports {', '.join(SUPPORTED_CONSTRAINTS)})"
        )
    return Segment(parameter=found.group("name"), constraint=constraint, optional=bool(found.group("optional")))


def _feature(text: str) -> str:
    """The name of the route-template feature a segment the runner refuses uses."""
    if "{{" in text or "}}" in text:
        return "escaped braces"
    if "{*" in text:
        return "a catch-all parameter"
    if "=" in text:
        return "a default value"
    if text.count("{") > 1 or not (text.startswith("{") and text.endswith("}")):
        return "a complex segment: literal text or several parameters in one segment"
    return "a parameter name it cannot read"
