"""Fill a ROS message from the YAML of a `ros2 service call` / `topic pub` / `action send_goal` line, as `ros2` does.

`ros2` parses the YAML and hands the dict to `rosidl_runtime_py.set_message_fields`, which has no pip
wheel. `fill_message` is the same recursion over the generated rclpy classes: an unknown field name
raises AttributeError, a value the field cannot take raises (the generated setters check types, array
sizes and ranges: messages are made with check_fields=True, which Jazzy's classes otherwise leave to the
ROS_PYTHON_CHECK_FIELDS variable), a nested message is filled from its dict, a sequence of messages
element by element.
"""
from __future__ import annotations

import array
import importlib

import numpy
import yaml
from rosidl_parser.definition import AbstractNestedType, NamespacedType


def message_class(type_name: str):
    """The class `ros2` means by "pkg/Name", "pkg/msg/Name", "pkg/srv/Name" (its Request) or
    "pkg/action/Name" (its Goal)."""
    parts = type_name.strip("/").split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or parts[1] not in ("msg", "srv", "action"):
        raise ValueError(f"not a ROS interface type: {type_name!r}")
    package, kind, name = parts
    cls = getattr(importlib.import_module(f"{package}.{kind}"), name)
    return {"msg": cls, "srv": getattr(cls, "Request", None), "action": getattr(cls, "Goal", None)}[kind]


def new_message(cls):
    """An empty message whose setters check every value (Jazzy: check_fields; older classes always check)."""
    try:
        return cls(check_fields=True)
    except TypeError:  # generated before check_fields existed
        return cls()


def fill_message(msg, values):
    """Set msg's fields from a dict (recursively), checking names and types like set_message_fields."""
    if not isinstance(values, dict):
        raise TypeError(f"{type(msg).__name__}: expected a mapping of field names, got {values!r}")
    slot_types = dict(zip(msg.get_fields_and_field_types(), msg.SLOT_TYPES))
    for name, value in values.items():
        if name not in slot_types:
            raise AttributeError(f"{type(msg).__name__} has no field {name!r} "
                                 f"(fields: {', '.join(slot_types)})")
        current = getattr(msg, name)
        kind = type(current)
        if kind is array.array:
            new = array.array(current.typecode, value)
        elif kind is numpy.ndarray:
            new = numpy.array(value, dtype=current.dtype)
        elif type(value) is kind:
            new = value
        else:
            try:
                new = kind(value)
            except TypeError:
                new = fill_message(new_message(kind), value)
        slot = slot_types[name]
        if isinstance(slot, AbstractNestedType) and isinstance(slot.value_type, NamespacedType):
            element = getattr(importlib.import_module(".".join(slot.value_type.namespaces)), slot.value_type.name)
            new = [fill_message(new_message(element), item) for item in new]
        setattr(msg, name, new)
    return msg


def message_from_yaml(type_name: str, text: str):
    """The message `ros2 ... TYPE "TEXT"` would send (an empty text is an empty message)."""
    values = yaml.safe_load(text) if text.strip() else {}
    return fill_message(new_message(message_class(type_name)), values or {})
