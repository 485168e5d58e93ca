"""Field-by-field comparison of rclpy messages, with the path of the first difference in the error.

Generated messages have __eq__, but it only says "not equal"; these helpers name the field.
"""
from __future__ import annotations

import array
import math

import numpy as np


def _is_message(value) -> bool:
    return hasattr(type(value), "get_fields_and_field_types")


def message_differences(expected, actual, path: str = "msg") -> list[str]:
    """Every field (recursively, arrays element by element) where actual differs from expected."""
    if _is_message(expected):
        if type(expected) is not type(actual):
            return [f"{path}: type {type(actual).__name__} != {type(expected).__name__}"]
        diffs = []
        for name in type(expected).get_fields_and_field_types():
            diffs += message_differences(getattr(expected, name), getattr(actual, name), f"{path}.{name}")
        return diffs
    if isinstance(expected, (list, tuple, array.array, np.ndarray, bytes)):
        expected_items, actual_items = list(expected), list(actual)
        if len(expected_items) != len(actual_items):
            return [f"{path}: length {len(actual_items)} != {len(expected_items)}"]
        diffs = []
        for i, (e, a) in enumerate(zip(expected_items, actual_items)):
            diffs += message_differences(e, a, f"{path}[{i}]")
        return diffs
    if isinstance(expected, float) or isinstance(expected, np.floating):
        if not (float(expected) == float(actual) or (math.isnan(expected) and math.isnan(actual))):
            return [f"{path}: {actual!r} != {expected!r}"]
        return []
    if expected != actual:
        return [f"{path}: {actual!r} != {expected!r}"]
    return []


def assert_messages_equal(expected, actual, what: str = "message") -> None:
    diffs = message_differences(expected, actual)
    assert not diffs, f"{what} differs after the round trip in {len(diffs)} field(s):\n  " + "\n  ".join(diffs[:20])


def unset_fields(msg, path: str = "msg") -> list[str]:
    """Fields left at their default value (recursively; arrays must be non-empty).

    A sample message with no unset field exercises every field of its type; adding a field to a .msg
    without extending the sample makes the interface tests fail here.
    """
    unset = []
    default = type(msg)()
    for name in type(msg).get_fields_and_field_types():
        value, value_path = getattr(msg, name), f"{path}.{name}"
        if _is_message(value):
            unset += unset_fields(value, value_path)
        elif isinstance(value, (list, tuple, array.array, np.ndarray, bytes)):
            items = list(value)
            if not items:
                unset.append(value_path + " (empty array)")
            elif _is_message(items[0]):
                for i, item in enumerate(items):
                    unset += unset_fields(item, f"{value_path}[{i}]")
            elif all(item == 0 for item in items) and not isinstance(items[0], str):
                unset.append(value_path + " (all zero)")
        elif value == getattr(default, name):
            unset.append(value_path)
    return unset
