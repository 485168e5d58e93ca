"""Writing rosbag2 bags (MCAP by default) from plain field dicts, with definitions embedded.

Thin layer over rosbags' Writer: topics are added by name and type, messages are given as dicts
in the pam_ros.messages.fields layout (or as already serialized CDR bytes). Every topic's schema is
the .msg text of its type (pam_ros's own from msg/), so MCAP tools decode the bag without ROS.
"""
from __future__ import annotations

from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys.store import Typestore

from pam_ros.replay.interfaces import build_message, pam_ros_typestore

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


class BagWriter:
    """Use as a context manager; the bag is finished (index, metadata.yaml) on exit, even after an error."""

    def __init__(self, path: str | Path, storage: str = "mcap", typestore: Typestore | None = None) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {sorted(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        self.store = typestore or pam_ros_typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=STORAGES[storage])
        self._connections = {}
        self.counts: dict[str, int] = {}
        self._open = False

    def open(self) -> "BagWriter":
        self._writer.open()
        self._open = True
        return self

    def add_topic(self, topic: str, msgtype: str, *, msgdef: str | None = None, rihs01: str | None = None) -> None:
        """Declare a topic. msgdef/rihs01: keep a definition taken from another bag (else the typestore's)."""
        if topic in self._connections:
            raise ValueError(f"topic {topic!r} added twice")
        if msgdef is not None and rihs01:
            conn = self._writer.add_connection(topic, msgtype, msgdef=msgdef, rihs01=rihs01)
        else:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.store)
        self._connections[topic] = conn
        self.counts[topic] = 0

    def write_fields(self, topic: str, log_time_ns: int, fields: dict) -> None:
        conn = self._connections[topic]
        message = build_message(self.store, conn.msgtype, fields)
        self.write_raw(topic, log_time_ns, self.store.serialize_cdr(message, conn.msgtype))

    def write_raw(self, topic: str, log_time_ns: int, cdr: bytes) -> None:
        self._writer.write(self._connections[topic], int(log_time_ns), cdr)
        self.counts[topic] += 1

    def close(self) -> None:
        """Finish the bag (index and metadata.yaml). Safe to call twice."""
        if self._open:
            self._open = False
            self._writer.close()

    def __enter__(self) -> "BagWriter":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
