"""The one colour of each object, from its id only: the overlay (viz/overlay.py) and the RViz markers
(ros/planning.py) both use it, so an object looks the same in the image and in the 3-D view, across
frames, runs and front ends."""
from __future__ import annotations

import colorsys
import re
import zlib

_GOLDEN = 0.618033988749895  # successive multiples spread evenly around a circle
_NUMBERED = re.compile(r"(.*?)(\d{1,9})")


def object_colour(object_id: str) -> tuple[int, int, int]:
    """A bright RGB colour that depends on the object id only (stable across frames and runs).

    Numbered ids (obj_1, obj_2, ...: how the node names objects) step around the hue circle by the
    golden ratio from their prefix's hue, so neighbours in a scene never get look-alike colours; other
    ids get a hue from their hash."""
    # crc32 rather than hash(): Python salts str hashes per process, colours must not change.
    numbered = _NUMBERED.fullmatch(object_id)
    if numbered is not None:
        start = zlib.crc32(numbered.group(1).encode("utf-8")) / 2**32
        hue = (start + int(numbered.group(2)) * _GOLDEN) % 1.0
    else:
        hue = (zlib.crc32(object_id.encode("utf-8")) * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def object_colour_unit(object_id: str) -> tuple[float, float, float]:
    """object_colour as floats in [0, 1] (std_msgs/ColorRGBA)."""
    return tuple(channel / 255.0 for channel in object_colour(object_id))
