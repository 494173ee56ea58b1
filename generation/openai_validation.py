"""Strict validation of the chat fields llmhub knows, against OpenAI's published types and ranges.

A request that breaks one gets a 400 naming the field (`param`) before any upstream is called, in OpenAI's
words ("Invalid type for 'temperature'..."), instead of reaching an upstream that may crash on it and cost a
fallback. Fields llmhub does not know pass through untouched (forward compatible); `null` is accepted where
OpenAI accepts it (absent).

Hand-written as a table of small checks rather than generated from the SDK's types: those types carry no ranges
(0-2, 0-20, at most 4 stop sequences), only generation/client.py may import the SDK, and a table walked once per
field costs a few microseconds a request (`make bench` and `python -m bench.validation`).
"""

import re
from collections.abc import Callable
from typing import Any

from django.conf import settings

from llmhub.errors import ApplicationError

Check = Callable[[str, Any], None]

_JSON_TYPE = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
              dict: "an object"}
_FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_TOOLS = 128
MAX_STOP = 4
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
TOOL_CHOICES = ("none", "auto", "required")
# Fields that would let a caller redirect the stored key to another host, or smuggle headers.
FORBIDDEN_FIELDS = frozenset({"api_key", "api_base", "base_url", "extra_headers", "headers", "extra_body",
                              "custom_llm_provider", "organization", "api_version", "deployment_id"})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class InvalidField(ApplicationError):
    status = 400
    code = "invalid_value"


def _type_error(param: str, expected: str, value: Any) -> InvalidField:
    got = "null" if value is None else _JSON_TYPE.get(type(value), "a value")
    return InvalidField(f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
                        code="invalid_type", extra={"param": param})


def _value_error(param: str, message: str) -> InvalidField:
    return InvalidField(f"Invalid '{param}': {message}", extra={"param": param})


def _number(low: float, high: float) -> Check:
    def check(param: str, value: Any) -> None:
        if type(value) is not int and type(value) is not float:
            raise _type_error(param, "a number", value)
        if not low <= value <= high:
            raise _value_error(param, f"expected a value from {low:g} to {high:g}, but got {value} instead.")
    return check


def _integer(low: int, high: int | Callable[[], int] | None = None) -> Check:
    def check(param: str, value: Any) -> None:
        if type(value) is not int:
            raise _type_error(param, "an integer", value)
        top = high() if callable(high) else high
        if value < low or (top is not None and value > top):
            expected = f"from {low} to {top}" if top is not None else f"of at least {low}"
            raise _value_error(param, f"expected an integer {expected}, but got {value} instead.")
    return check


def _of_type(kind: type) -> Check:
    expected = _JSON_TYPE[kind]

    def check(param: str, value: Any) -> None:
        if type(value) is not kind:
            raise _type_error(param, expected, value)
    return check


_string, _boolean, _object = _of_type(str), _of_type(bool), _of_type(dict)


def _stop(param: str, value: Any) -> None:
    if type(value) is str:
        return
    if type(value) is not list or not all(type(item) is str for item in value):
        raise _type_error(param, "a string or an array of strings", value)
    if len(value) > MAX_STOP:
        raise _value_error(param, f"expected at most {MAX_STOP} stop sequences, but got {len(value)}.")


def _string_list(param: str, value: Any) -> None:
    if type(value) is not list or not all(type(item) is str for item in value):
        raise _type_error(param, "an array of strings", value)


def _logit_bias(param: str, value: Any) -> None:
    _object(param, value)
    for token, bias in value.items():
        _number(-100, 100)(f"{param}.{token}", bias)


def _metadata(param: str, value: Any) -> None:
    _object(param, value)
    for key, item in value.items():
        _string(f"{param}.{key}", item)


def _stream_options(param: str, value: Any) -> None:
    _object(param, value)
    if value.get("include_usage") is not None:
        _boolean(f"{param}.include_usage", value["include_usage"])


def _response_format(param: str, value: Any) -> None:
    _object(param, value)
    kind = value.get("type")
    if kind not in RESPONSE_FORMATS:
        raise _value_error(f"{param}.type", f"expected one of {', '.join(RESPONSE_FORMATS)}, but got {kind!r}.")
    if kind == "json_schema":
        schema = value.get("json_schema")
        _object(f"{param}.json_schema", schema)
        name = schema.get("name")
        if type(name) is not str or not _FUNCTION_NAME.fullmatch(name):
            raise _value_error(f"{param}.json_schema.name", "expected a name of 1 to 64 letters, digits, _ or -.")
        if schema.get("schema") is not None:
            _object(f"{param}.json_schema.schema", schema["schema"])
        if schema.get("strict") is not None:
            _boolean(f"{param}.json_schema.strict", schema["strict"])


def _name_valid(value: Any) -> bool:
    return type(value) is str and _FUNCTION_NAME.fullmatch(value) is not None


def _named(param: str, value: Any) -> None:
    """An object with a `name` of 1 to 64 letters, digits, `_` or `-` (a function, a custom tool)."""
    _object(param, value)
    if not _name_valid(value.get("name")):
        raise _value_error(f"{param}.name", "expected a name of 1 to 64 letters, digits, _ or -.")


_FUNCTION_OPTIONAL = (("parameters", dict), ("description", str), ("strict", bool))


def _function_valid(function: Any) -> bool:
    return type(function) is dict and _name_valid(function.get("name")) and all(
        (value := function.get(name)) is None or type(value) is kind for name, kind in _FUNCTION_OPTIONAL)


def _function_refused(param: str, function: Any) -> InvalidField:
    """The error of a function `_function_valid` refused, naming the field at fault."""
    try:
        _named(param, function)
    except InvalidField as error:
        return error
    name, kind = next((name, kind) for name, kind in _FUNCTION_OPTIONAL
                      if function.get(name) is not None and type(function[name]) is not kind)
    return _type_error(f"{param}.{name}", _JSON_TYPE[kind], function[name])


def _tools(param: str, value: Any) -> None:
    if type(value) is not list:
        raise _type_error(param, "an array of tools", value)
    if len(value) > MAX_TOOLS:
        raise _value_error(param, f"expected at most {MAX_TOOLS} tools, but got {len(value)}.")
    for index, tool in enumerate(value):
        if type(tool) is not dict:
            raise _type_error(f"{param}[{index}]", "an object", tool)
        kind = tool.get("type", "function")
        if kind == "function":
            if not _function_valid(tool.get("function")):  # paths are formatted only on failure
                raise _function_refused(f"{param}[{index}].function", tool.get("function"))
        elif kind == "custom":
            _named(f"{param}[{index}].custom", tool.get("custom"))
        else:
            raise _value_error(f"{param}[{index}].type", f"expected 'function' or 'custom', but got {kind!r}.")


def _tool_choice(param: str, value: Any) -> None:
    if type(value) is str:
        if value not in TOOL_CHOICES:
            raise _value_error(param, f"expected one of {', '.join(TOOL_CHOICES)} or an object, but got {value!r}.")
        return
    if type(value) is not dict:
        raise _type_error(param, "a string or an object", value)
    kind = value.get("type")
    if kind in ("function", "custom"):
        _named(f"{param}.{kind}", value.get(kind))
    elif kind == "allowed_tools":
        _object(f"{param}.allowed_tools", value.get("allowed_tools"))
    else:
        raise _value_error(f"{param}.type", f"expected 'function', 'custom' or 'allowed_tools', but got {kind!r}.")


# The known fields and their checks; a null value is never checked (OpenAI takes null as absent).
FIELD_CHECKS: dict[str, Check] = {
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "n": _integer(1, lambda: settings.LLMHUB["MAX_CHOICES"]),
    "stop": _stop,
    "seed": _integer(-(2**63), 2**64 - 1),
    "logprobs": _boolean,
    "top_logprobs": _integer(0, 20),
    "logit_bias": _logit_bias,
    "response_format": _response_format,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _boolean,
    "stream_options": _stream_options,
    "user": _string,
    "store": _boolean,
    "metadata": _metadata,
    "modalities": _string_list,
    "reasoning_effort": _string,
    "service_tier": _string,
    "verbosity": _string,
    "prompt_cache_key": _string,
    "safety_identifier": _string,
    "prediction": _object,
    "audio": _object,
    "web_search_options": _object,
}

# Content parts: each type's required field and the JSON type it must have; unknown part types pass through.
_PART_FIELDS: dict[str, tuple[str, type]] = {"text": ("text", str), "image_url": ("image_url", dict),
                                             "input_audio": ("input_audio", dict), "file": ("file", dict),
                                             "refusal": ("refusal", str)}


def _content_parts(index: int, parts: list) -> None:
    for position, part in enumerate(parts):
        if type(part) is not dict or type(kind := part.get("type")) is not str:
            raise _value_error(f"messages[{index}].content[{position}]",
                               "expected a content part: an object with a 'type'.")
        required = _PART_FIELDS.get(kind)
        if required is None:
            continue
        name, expected = required
        value = part.get(name)
        if type(value) is not expected:
            raise _type_error(f"messages[{index}].content[{position}].{name}", _JSON_TYPE[expected], value)
        if kind == "image_url" and type(value.get("url")) is not str:
            raise _type_error(f"messages[{index}].content[{position}].image_url.url", "a string", value.get("url"))


def message_validate(index: int, message: dict[str, Any]) -> None:
    """What OpenAI requires of one message beyond its role and the type of its content."""
    if type(message.get("content")) is list:
        _content_parts(index, message["content"])
    if message["role"] == "tool" and type(message.get("tool_call_id")) is not str:
        raise _type_error(f"messages[{index}].tool_call_id", "a string", message.get("tool_call_id"))
    if (name := message.get("name")) is not None and type(name) is not str:
        raise _type_error(f"messages[{index}].name", "a string", name)


def chat_fields_validate(data: dict[str, Any]) -> None:
    """Checks every known field of a chat request (messages aside); raises InvalidField naming the first bad one.
    `stream: null` becomes `stream: false`."""
    for name, value in data.items():
        check = FIELD_CHECKS.get(name)
        if check is not None and value is not None:
            check(name, value)
    if "stream" in data and data["stream"] is None:
        data["stream"] = False
