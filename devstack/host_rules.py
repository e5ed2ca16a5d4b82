"""What the Functions host and the Python worker do to values passing between them, as pure functions.

The local runner applies these so the app sees, and the queues receive, what they would in Azure.
Each rule names the source it follows; the sources are `Azure/azure-functions-host` (host),
`Azure/azure-webjobs-sdk` (SDK), `Azure/azure-functions-python-worker` (worker), `JamesNK/Newtonsoft.Json`
(the host's JSON library) and the `azure.functions` package the worker loads.

Assumed of the Azure machine: Linux (Flex Consumption), so `Environment.NewLine` is "\\n"; its local
time zone is UTC (no WEBSITE_TIME_ZONE); .NET's current culture formats like the invariant culture.
"""

from __future__ import annotations

import calendar
import datetime
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from azure.functions.meta import Datum

logger = logging.getLogger("devstack.runner")

# --- Newtonsoft.Json, as the host uses it --------------------------------------------------------

NEWTONSOFT_INDENT = "  "  # JsonTextWriter: Indentation 2, IndentChar ' '
NEWTONSOFT_NEWLINE = "\n"  # JsonTextWriter.WriteIndent writes TextWriter.NewLine = Environment.NewLine (Linux)
DOTNET_DOUBLE_PRECISION = 15  # .NET's double.ToString(): scientific past max(15, digits) integer digits

# Newtonsoft's Utilities/DateTimeParser.cs `Parse`: yyyy-MM-ddTHH:mm:ss[.f{1,7}][Z|±HH[[:]mm]].
_ISO_DATE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?$"
)
# Newtonsoft's Utilities/DateTimeUtils.cs `TryParseMicrosoftDate`: /Date(ms[±HHmm])/.
_MICROSOFT_DATE = re.compile(r"^/Date\((-?\d+)(?:([+-])(\d{2})(\d{2}))?\)/$")
# Newtonsoft's Utilities/JavaScriptUtils.cs `WriteEscapedJavaScriptString` with StringEscapeHandling.Default:
# control characters, '"' and '\\' escaped, and three line breaks above ASCII; all other non-ASCII as is.
_ESCAPED = re.compile("[\x00-\x1f\"\\\\\u0085\u2028\u2029]")
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f", "\b": "\\b", '"': '\\"', "\\": "\\\\"}


@dataclass(frozen=True)
class NetDateTime:
    """A JSON string Newtonsoft read as a System.DateTime: wall-clock time, 100 ns ticks, DateTimeKind."""

    wall: datetime.datetime  # naive, whole seconds
    ticks: int  # the fraction of the second, in 100 ns ticks (0 .. 9_999_999)
    kind: str  # "Utc", "Local" or "Unspecified"

    def iso(self) -> str:
        """`DateTimeUtils.WriteDateTimeString` (IsoDateFormat): the fraction without trailing zeros, then the kind."""
        text = self.wall.strftime("%Y-%m-%dT%H:%M:%S")
        if self.ticks:
            text += "." + f"{self.ticks:07d}".rstrip("0")
        if self.kind == "Utc":
            return text + "Z"
        if self.kind == "Local":
            return text + "+00:00"  # the offset of the machine's zone: UTC in Azure
        return text

    def invariant(self) -> str:
        """`Convert.ToString(DateTime, CultureInfo.InvariantCulture)`: "MM/dd/yyyy HH:mm:ss", no fraction, no zone."""
        return self.wall.strftime("%m/%d/%Y %H:%M:%S")


def newtonsoft_date(text: str) -> NetDateTime | None:
    """The DateTime Newtonsoft's JsonTextReader makes of a string (DateParseHandling.DateTime), or None.

    Newtonsoft `Utilities/DateTimeUtils.cs` `TryParseDateTime` (19 to 40 characters with 'T' at 10, or
    /Date(...)/), `TryParseDateTimeIso` + `Utilities/DateTimeParser.cs` `Parse`: `Z` gives a Utc DateTime, an
    offset a Local one (converted to the machine's zone), none an Unspecified one. Not mirrored: Newtonsoft's
    quirks with more than 7 fraction digits (this leaves such strings alone).
    """
    micro = _MICROSOFT_DATE.match(text)
    if micro:
        milliseconds, sign, _, _ = micro.groups()
        moment = datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=int(milliseconds))
        ticks = moment.microsecond * 10
        return NetDateTime(moment.replace(microsecond=0), ticks, "Local" if sign else "Utc")
    if not 19 <= len(text) <= 40:
        return None
    match = _ISO_DATE.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, utc, sign, zone_hour, zone_minute = match.groups()
    year, month, day, hour, minute, second = map(int, (year, month, day, hour, minute, second))
    ticks = int((fraction or "0").ljust(7, "0"))
    if year < 1 or not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if hour > 24 or minute >= 60 or second >= 60 or (hour == 24 and (minute or second or ticks)):
        return None
    wall = datetime.datetime(year, month, day, hour % 24, minute, second) + datetime.timedelta(days=hour // 24)
    if utc:
        return NetDateTime(wall, ticks, "Utc")
    if sign:
        offset = datetime.timedelta(hours=int(zone_hour), minutes=int(zone_minute or 0))
        return NetDateTime(wall - offset if sign == "+" else wall + offset, ticks, "Local")
    return NetDateTime(wall, ticks, "Unspecified")


def newtonsoft_parse(text: str, *, parse_dates: bool = True) -> Any:
    """`JToken.Parse(text)` as Python values, strings that look like dates read as NetDateTime.

    `JToken.Parse` uses the reader's defaults (DateParseHandling.DateTime); the host's TypedData.Json
    path passes DateParseHandling.None (`parse_dates=False`). Numbers: integers stay int (Int64 or
    BigInteger), others are double (FloatParseHandling.Double). Not mirrored: Newtonsoft also accepts
    comments, single quotes and unquoted names, where this raises ValueError.
    """
    value = json.loads(text)
    return _map_values(value, _read_date) if parse_dates else value


def _read_date(value: Any) -> Any:
    return (newtonsoft_date(value) or value) if isinstance(value, str) else value


def _map_values(value: Any, change: Callable[[Any], Any]) -> Any:
    """`value` with `change` applied to every value that is not an object or an array (names stay)."""
    if isinstance(value, dict):
        return {name: _map_values(item, change) for name, item in value.items()}
    if isinstance(value, list):
        return [_map_values(item, change) for item in value]
    return change(value)


def dotnet_double(value: float) -> str:
    """`double.ToString(CultureInfo.InvariantCulture)` on .NET Core 3.0+: the shortest round-trip digits,
    scientific (`1E+15`, `1E-05`) past max(15, digits) integer digits or below 0.0001."""
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple))
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    scale = len(digits) + exponent  # value = 0.<digits> x 10**scale
    if scale > max(len(digits), DOTNET_DOUBLE_PRECISION) or scale < -3:
        power = scale - 1
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}E{'+' if power >= 0 else '-'}{abs(power):02d}"
    if scale <= 0:
        return f"{sign}0.{'0' * -scale}{digits}"
    if scale >= len(digits):
        return sign + digits + "0" * (scale - len(digits))
    return f"{sign}{digits[:scale]}.{digits[scale:]}"


def _json_string(text: str) -> str:
    def escape(match: re.Match[str]) -> str:
        char = match.group(0)
        return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"

    return '"' + _ESCAPED.sub(escape, text) + '"'


def _json_number(value: float) -> str:
    """`JsonTextWriter.WriteValue(double)`: FloatFormatHandling.String for NaN/Infinity, else
    `JsonConvert.ToString` + `EnsureDecimalPlace` (".0" added to integral values)."""
    if math.isnan(value):
        return '"NaN"'
    if math.isinf(value):
        return '"Infinity"' if value > 0 else '"-Infinity"'
    text = dotnet_double(value)
    return text if any(c in text for c in ".E") else text + ".0"


def newtonsoft_indented(token: Any, level: int = 0) -> str:
    """`JToken.ToString()` = `ToString(Formatting.Indented)` (Newtonsoft `Linq/JToken.cs`): 2-space indent,
    `"name": value`, one element per line, `{}`/`[]` when empty, dates in ISO form."""
    if isinstance(token, dict) or isinstance(token, list):
        if not token:
            return "{}" if isinstance(token, dict) else "[]"
        inner = NEWTONSOFT_NEWLINE + NEWTONSOFT_INDENT * (level + 1)
        if isinstance(token, dict):
            items = [f"{_json_string(name)}: {newtonsoft_indented(item, level + 1)}" for name, item in token.items()]
            opening, closing = "{", "}"
        else:
            items = [newtonsoft_indented(item, level + 1) for item in token]
            opening, closing = "[", "]"
        return opening + inner + ("," + inner).join(items) + NEWTONSOFT_NEWLINE + NEWTONSOFT_INDENT * level + closing
    if isinstance(token, NetDateTime):
        return '"' + token.iso() + '"'
    if isinstance(token, str):
        return _json_string(token)
    if token is True or token is False:
        return "true" if token else "false"
    if token is None:
        return "null"
    if isinstance(token, int):
        return str(token)
    return _json_number(token)


def jtoken_text(token: Any) -> str:
    """`JToken.ToString()` of one element: JSON for objects and arrays, and for a JValue (Newtonsoft
    `Linq/JValue.cs` `ToString`) its value's own ToString(): a string as is, "" for null, "True"/"False",
    a date in the invariant culture."""
    if isinstance(token, (dict, list)):
        return newtonsoft_indented(token)
    if isinstance(token, NetDateTime):
        return token.invariant()
    if isinstance(token, str):
        return token
    if token is None:
        return ""
    if token is True or token is False:
        return str(token)
    if isinstance(token, int):
        return str(token)
    return dotnet_double(token) if math.isfinite(token) else ("NaN" if math.isnan(token) else _infinity(token))


def _infinity(value: float) -> str:
    return "Infinity" if value > 0 else "-Infinity"


# --- output bindings ----------------------------------------------------------------------------


def is_json(text: str | None) -> bool:
    """Host `src/WebJobs.Script/Utility.cs` `IsJson`: trimmed, it starts with { and ends with }, or [ and ]."""
    if not text:
        return False
    text = text.strip()
    return (text.startswith("{") and text.endswith("}")) or (text.startswith("[") and text.endswith("]"))


def host_output_messages(datum: Datum) -> list[bytes]:
    """The queue messages the host writes for what the worker returned on a queue output binding.

    The worker encodes the value (`azure.functions` queue.py `QueueMessageOutConverter.encode`): str as
    TypedData.String, bytes as TypedData.Bytes, a QueueMessage or a list as TypedData.Json. The host
    turns that into an object (host `src/WebJobs.Script.Grpc/MessageExtensions/GrpcMessageConversionExtensions.cs`
    `ToObject`: Json through `JsonConvert.DeserializeObject` with DateParseHandling.None), then
    (`src/WebJobs.Script/Binding/FunctionBinding.cs` `ReadAsEnumerable`) a JSON-looking string is
    `JToken.Parse`d (dates read) and a JArray gives one message per element, anything else one message;
    `BindAsyncCollectorAsync<byte[]>` (the queue extension converts byte[] to a message, SDK
    `QueuesExtensionConfigProvider.cs`, so byte[] is the collector type `AsyncCollectorBindingProvider.GetDefaultType`
    picks first) keeps a byte[] and writes every other element as the UTF-8 of its `ToString()`.
    """
    if datum.type == "bytes":
        return [bytes(datum.value)]
    if datum.type == "string":
        text = datum.value
        if not is_json(text):
            return [text.encode("utf-8")]
        token = newtonsoft_parse(text)
    elif datum.type == "json":
        token = newtonsoft_parse(datum.value, parse_dates=False)
    else:
        raise TypeError(f"a queue output cannot carry TypedData of type {datum.type!r}")
    elements = token if isinstance(token, list) else [token]
    return [jtoken_text(element).encode("utf-8") for element in elements]


# --- queue trigger metadata -------------------------------------------------------------------------


def queue_trigger_metadata(body: bytes, real: Mapping[str, Datum]) -> dict[str, Datum]:
    """The trigger metadata the worker gets for a queue message: the real values, overwritten by the
    message's own top-level JSON fields.

    Host `src/WebJobs.Script/Description/Workers/WorkerFunctionInvoker.cs` `TransformInput` calls
    `src/WebJobs.Script/Utility.cs` `ApplyBindingData` on the message text: when it `IsJson`, every top-level
    property that is not an array and not null is written into the binding data, whose dictionary
    ignores case (SDK `src/Microsoft.Azure.WebJobs.Host/Bindings/Runtime/Binder.cs`, OrdinalIgnoreCase), so
    `dequeueCount` replaces `DequeueCount` and the name stays as the host spelled it. The value is
    `ConvertPropertyValue`'s: an object as a JObject (sent as TypedData.Json), anything else `(string)JToken`
    (sent as TypedData.String; a date in the invariant culture, numbers and "True"/"False" as text). A
    message that is not a JSON object changes nothing. The worker then builds the QueueMessage from these
    names (`azure.functions` queue.py `QueueMessageInConverter.decode`).
    """
    metadata = dict(real)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return metadata
    if not is_json(text):
        return metadata
    try:
        parsed = newtonsoft_parse(text)
    except ValueError:
        return metadata  # "it's not an error if the incoming message isn't JSON" (ApplyBindingData)
    if not isinstance(parsed, dict):
        return metadata  # JObject.Parse of an array throws, and is ignored the same way
    names = {name.lower(): name for name in metadata}
    for name, value in parsed.items():
        if value is None or isinstance(value, list):
            continue
        if isinstance(value, dict):
            plain = _map_values(value, lambda item: item.iso() if isinstance(item, NetDateTime) else item)
            datum = Datum(type="json", value=json.dumps(plain, separators=(",", ":")))
        else:
            datum = Datum(type="string", value=jtoken_text(value))
        key = names.setdefault(name.lower(), name)
        metadata[key] = datum
    return metadata


def host_metadata_datum(value: Any) -> Datum:
    """A real trigger-metadata value as the host sends it: a string as TypedData.String, a number or a
    time through `ToRpcDefault` (`JsonConvert.SerializeObject`, TypedData.Json), host
    `GrpcMessageConversionExtensions.cs` `ToRpc`."""
    if isinstance(value, str):
        return Datum(type="string", value=value)
    if isinstance(value, datetime.datetime):
        return Datum(type="json", value=json.dumps(value.isoformat()))
    return Datum(type="json", value=json.dumps(value))


# --- the worker's thread pool ------------------------------------------------------------------------

THREAD_COUNT_SETTING = "PYTHON_THREADPOOL_THREAD_COUNT"
THREAD_COUNT_MIN = 1  # worker constants.py PYTHON_THREADPOOL_THREAD_COUNT_MIN


def worker_thread_count(environ: Mapping[str, str], *, cpu_count: int | None = None) -> int:
    """How many sync invocations the Python worker runs at once, in its one thread pool.

    Worker `azure_functions_worker/dispatcher.py` `_get_sync_tp_max_workers` (Python 3.9+): the app setting
    if it is an integer of at least 1 (`constants.py` PYTHON_THREADPOOL_THREAD_COUNT_MIN; no maximum),
    otherwise a warning and no value, and `_create_sync_call_tp` makes `ThreadPoolExecutor(max_workers=None)`:
    min(32, os.cpu_count() + 4) threads.
    """
    value = environ.get(THREAD_COUNT_SETTING)
    if value is not None:
        try:
            count = int(value)
        except ValueError:
            logger.warning("%s must be an integer", THREAD_COUNT_SETTING)
        else:
            if count >= THREAD_COUNT_MIN:
                return count
            logger.warning(
                "%s must be set to a value between %s and sys.maxint. Reverting to default value for max_workers",
                THREAD_COUNT_SETTING,
                THREAD_COUNT_MIN,
            )
    cpus = os.cpu_count() if cpu_count is None else cpu_count
    return min(32, (cpus or 1) + 4)
