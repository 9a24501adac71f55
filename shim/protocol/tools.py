"""Chat tool fields: `tools`, `tool_choice`, `parallel_tool_calls` and the legacy
`functions` / `function_call`, checked against OpenAI's spec.

`validate_tools(body)` raises APIError (400) naming the first bad field:
  tools          array of {"type": "function", "function": {name, description?,
                 parameters?, strict?}}; names 1-64 of [a-zA-Z0-9_-], unique; parameters an
                 object (the core checks it is a JSON Schema); type "custom" -> 400
                 unsupported_parameter
  tool_choice    "none" | "auto" | "required" | {"type": "function", "function": {"name"}}
                 naming a declared function; "required" and a name need tools; custom and
                 allowed_tools choices -> 400 unsupported_parameter
  functions      array of {name, description?, parameters?} (legacy tools; not with tools)
  function_call  "none" | "auto" | {"name"} (legacy tool_choice; not with tool_choice)
"""
from __future__ import annotations

import re
from typing import Any

from shim.protocol.common import (
    expect_array,
    expect_bool,
    expect_object,
    expect_str,
    invalid_type,
    invalid_value,
    missing,
    quote,
    unsupported,
)

FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
CHOICE_MODES = ("none", "auto", "required")


def _present(body: dict, key: str) -> bool:
    return body.get(key) is not None


def _function(fn: Any, param: str) -> str:
    """Checks one function definition; returns its name."""
    fn = expect_object(fn, param)
    if "name" not in fn:
        raise missing(f"{param}.name")
    name = expect_str(fn["name"], f"{param}.name")
    if not FUNCTION_NAME.fullmatch(name):
        raise invalid_value(f"{param}.name", f"Invalid '{param}.name': string does not match pattern. Expected a "
                                             f"string that matches the pattern '^[a-zA-Z0-9_-]{{1,64}}$', got "
                                             f"{quote(name)}.")
    if _present(fn, "description"):
        expect_str(fn["description"], f"{param}.description")
    if _present(fn, "parameters"):
        expect_object(fn["parameters"], f"{param}.parameters")
    if _present(fn, "strict"):
        expect_bool(fn["strict"], f"{param}.strict")
    return name


def _declared(items: list, param: str, key: str | None) -> list[str]:
    names: list[str] = []
    for i, item in enumerate(items):
        p = f"{param}[{i}]"
        if key is not None:
            item = expect_object(item, p)
            if "type" not in item:
                raise missing(f"{p}.type")
            ttype = item["type"]
            if ttype == "custom":
                raise unsupported(f"{p}.type", "Custom tools (type 'custom')")
            if ttype != "function":
                raise invalid_value(f"{p}.type", f"Invalid value for '{p}.type': {quote(str(ttype))}. Supported "
                                                 "values are: 'function' and 'custom'.")
            if key not in item:
                raise missing(f"{p}.{key}")
            name = _function(item[key], f"{p}.{key}")
            where = f"{p}.{key}.name"
        else:
            name = _function(item, p)
            where = f"{p}.name"
        if name in names:
            raise invalid_value(where, f"Invalid '{param}': the function name {quote(name)} is declared twice.")
        names.append(name)
    return names


def _choice(value: Any, param: str, names: list[str], legacy: bool) -> None:
    if isinstance(value, str):
        modes = ("none", "auto") if legacy else CHOICE_MODES
        if value not in modes:
            raise invalid_value(param, f"Invalid value for '{param}': {quote(value)}. Supported values are: "
                                       + ", ".join(repr(m) for m in modes) + ", or an object naming a function.")
        if value == "required" and not names:
            raise invalid_value(param, f"Invalid value for '{param}': 'required' is only allowed when 'tools' "
                                       "are specified.")
        return
    if not isinstance(value, dict):
        raise invalid_type(param, "a string or an object", value)
    if legacy:
        fn = value
    else:
        if "type" not in value:
            raise missing(f"{param}.type")
        ctype = value["type"]
        if ctype in ("custom", "allowed_tools"):
            raise unsupported(param, f"'{param}' of type {quote(str(ctype))}")
        if ctype != "function":
            raise invalid_value(f"{param}.type", f"Invalid value for '{param}.type': {quote(str(ctype))}. "
                                                 "Supported values are: 'function', 'custom', 'allowed_tools'.")
        if "function" not in value:
            raise missing(f"{param}.function")
        fn = expect_object(value["function"], f"{param}.function")
    name_param = f"{param}.name" if legacy else f"{param}.function.name"
    if "name" not in fn:
        raise missing(name_param)
    name = expect_str(fn["name"], name_param)
    if name not in names:
        raise invalid_value(param, f"Invalid value for '{param}': no function named {quote(name)} was declared in "
                                   f"'{'functions' if legacy else 'tools'}'.")


def validate_tools(body: dict) -> None:
    """See the module doc."""
    if _present(body, "tools") and _present(body, "functions"):
        raise invalid_value("functions", "Use either 'tools' or the deprecated 'functions', not both.")
    if _present(body, "tool_choice") and _present(body, "function_call"):
        raise invalid_value("function_call", "Use either 'tool_choice' or the deprecated 'function_call', not both.")
    names: list[str] = []
    if _present(body, "tools"):
        names = _declared(expect_array(body["tools"], "tools"), "tools", "function")
    if _present(body, "functions"):
        names = _declared(expect_array(body["functions"], "functions"), "functions", None)
    if _present(body, "tool_choice"):
        _choice(body["tool_choice"], "tool_choice", [] if _present(body, "functions") else names, legacy=False)
    if _present(body, "function_call"):
        _choice(body["function_call"], "function_call", [] if _present(body, "tools") else names, legacy=True)
    if _present(body, "parallel_tool_calls"):
        expect_bool(body["parallel_tool_calls"], "parallel_tool_calls")
