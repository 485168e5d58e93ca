"""Reading rosbag2 bags (MCAP or sqlite3 storage) for the replay: image frames and prompts.

`rosbags.highlevel.AnyReader` does the work: it opens the bag and builds the types to decode with from
the definitions the bag embeds (ROS 2 Jazzy + pam_ros for bags that embed none). When an MCAP file has
no valid summary/footer (a recorder killed mid-write leaves exactly that), no rosbags reader opens it,
so its records are read sequentially instead (with the `mcap` stream reader), so everything written
before the damage is still replayed; the damage itself then surfaces as a BagReadError at the point
where reading stops.
"""
from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import apsw
import numpy as np
from mcap.exceptions import EndOfFile, McapError
from mcap.records import Channel, Footer, Message, Schema
from mcap.stream_reader import StreamReader
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import Connection, MessageDefinitionFormat
from rosbags.rosbag2 import ReaderError
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from pam_ros.engine.geometry import CameraIntrinsics, depth_to_metres
from pam_ros.engine.types import PromptRequest
from pam_ros.errors import BagOpenError, BagReadError, DepthError, TopicNotFoundError
from pam_ros.messages.fields import PromptMessageError, prompt_request_from_message, stamp_ns_of
from pam_ros.messages.images import ImageDecodeError, decode_compressed, decode_image
from pam_ros.replay.interfaces import (
    CAMERA_INFO_TYPE,
    COMPRESSED_IMAGE_TYPE,
    IMAGE_TYPE,
    PROMPT_TYPE,
    pam_ros_typestore,
)

IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)
# Errors a damaged storage file raises from deep inside the readers (rosbags reads sqlite3 bags with
# apsw, whose errors do not derive from the sqlite3 module's).
_DAMAGE_ERRORS = (AnyReaderError, ReaderError, McapError, apsw.Error, sqlite3.DatabaseError, struct.error,
                  EOFError, OSError, ValueError, KeyError, IndexError)


@dataclass(frozen=True)
class TopicSummary:
    name: str
    msgtype: str
    count: int | None  # None: unknown (bag read sequentially)


@dataclass(frozen=True)
class BagRecord:
    """One message of a topic the replay uses, in bag (log time) order."""

    kind: str  # "image" | "prompt" | "depth" | "camera_info"
    topic: str
    msgtype: str
    log_time_ns: int
    raw: bytes  # CDR
    image_index: int = -1  # index of the image message on the image topic, from 0
    definition: "MessageDefinitionText | None" = None


@dataclass(frozen=True)
class MessageDefinitionText:
    """A definition embedded in the bag: format "msg" or "idl", text, RIHS01 hash (may be empty)."""

    format: str
    text: str
    digest: str = ""


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # HxWx3 uint8
    stamp_ns: int  # header stamp
    frame_id: str


class BagInput:
    """An opened bag with its image topic chosen. Use as a context manager.

    image_topic: None picks the only image topic (Image or CompressedImage); an error lists the
    candidates when there are none or several. Prompts are read from every pam_ros/msg/Prompt topic.
    """

    def __init__(self, path: str | Path, image_topic: str | None = None, *, depth_topic: str | None = None,
                 camera_info_topic: str | None = None, prompt_topics: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.warning = ""  # non-empty: how the bag was read despite damage (shown in the summary)
        self._reader: AnyReader | None = None
        self._salvage_file: Path | None = None
        self._connections: list[Connection] = []
        self._stores: dict[tuple[MessageDefinitionText, str], Typestore] = {}
        self.topics = self._open()
        try:
            self.image_topic, self.image_type = self._choose_image_topic(image_topic, exclude=depth_topic)
            # aligned depth (only when asked for): the depth image topic and its CameraInfo topic
            self.depth_topic, self.camera_info_topic = self._choose_depth_topics(depth_topic, camera_info_topic)
        except BaseException:
            self.close()
            raise
        # every Prompt topic, or the ones asked for (a camera's own, when several cameras are replayed)
        self.prompt_topics = sorted(t.name for t in self.topics if t.msgtype == PROMPT_TYPE
                                    and (prompt_topics is None or t.name in prompt_topics))
        self.image_count = next(t.count for t in self.topics if t.name == self.image_topic)

    # ----- opening -------------------------------------------------------------------------------
    def _open(self) -> list[TopicSummary]:
        if not self.path.exists():
            raise BagOpenError(f"bag not found: {self.path}")
        target = self._reader_target()
        reader, error = _open_reader(target)
        mcap_files = self._mcap_files(target)
        if reader is None and len(mcap_files) == 1 and mcap_files[0] != target:
            # metadata.yaml unusable, the storage file itself may be fine
            reader, _ = _open_reader(mcap_files[0])
            if reader is not None:
                self.warning = f"{target / 'metadata.yaml'} is unusable ({error}); read {mcap_files[0].name} alone"
        if reader is None:
            if len(mcap_files) != 1:
                raise BagOpenError(f"cannot open bag {self.path}: {error}")
            self.warning = (
                f"{mcap_files[0].name} has no valid index/footer ({error}); the bag is probably "
                f"truncated: reading its records sequentially up to the damage"
            )
            self._salvage_file = mcap_files[0]
            return self._scan_salvage_topics()
        self._reader = reader
        self._connections = list(reader.connections)
        summaries: dict[str, TopicSummary] = {}
        for conn in self._connections:
            previous = summaries.get(conn.topic)
            count = conn.msgcount + (previous.count if previous else 0)
            summaries[conn.topic] = TopicSummary(conn.topic, conn.msgtype, count)
        return sorted(summaries.values(), key=lambda t: t.name)

    def _reader_target(self) -> Path:
        """The directory (with metadata.yaml) or the single storage file to hand to rosbags."""
        if self.path.is_file() or (self.path / "metadata.yaml").exists():
            return self.path
        files = sorted([*self.path.glob("*.mcap"), *self.path.glob("*.db3")])
        if len(files) == 1:
            # A recorder that died before writing metadata.yaml leaves just the storage file.
            return files[0]
        if not files:
            raise BagOpenError(f"{self.path} is not a rosbag2 bag: no metadata.yaml, no .mcap or .db3 file")
        raise BagOpenError(
            f"{self.path} has no metadata.yaml and several storage files ({', '.join(f.name for f in files)}); "
            f"pass one of them as BAG"
        )

    @staticmethod
    def _mcap_files(target: Path) -> list[Path]:
        if target.is_file():
            return [target] if target.suffix == ".mcap" else []
        return sorted(target.glob("*.mcap"))

    def _scan_salvage_topics(self) -> list[TopicSummary]:
        """Channels (and their schemas) of a file read sequentially; counts are unknown."""
        schemas: dict[int, Schema] = {}
        channels: dict[int, Channel] = {}
        try:
            with self._salvage_file.open("rb") as stream:
                for record in StreamReader(stream, validate_crcs=True).records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel):
                        channels[record.id] = record
        except _DAMAGE_ERRORS:
            pass  # the damage is reported when the messages are read
        self._salvage_channels = {
            cid: (channel.topic, schemas[channel.schema_id].name if channel.schema_id in schemas else "",
                  _schema_definition(schemas.get(channel.schema_id)))
            for cid, channel in channels.items()
        }
        if not self._salvage_channels:
            raise BagOpenError(f"cannot open bag {self.path}: {self.warning}; no topic could be read")
        summaries = {topic: TopicSummary(topic, msgtype, None) for topic, msgtype, _ in self._salvage_channels.values()}
        return sorted(summaries.values(), key=lambda t: t.name)

    def _choose_image_topic(self, requested: str | None, exclude: str | None = None) -> tuple[str, str]:
        by_name = {t.name: t for t in self.topics}
        if requested:
            if requested not in by_name:
                raise TopicNotFoundError(
                    f"image topic {requested!r} is not in bag {self.path}. Topics in the bag:\n{self.describe_topics()}"
                )
            if by_name[requested].msgtype not in IMAGE_TYPES:
                raise TopicNotFoundError(
                    f"topic {requested!r} has type {by_name[requested].msgtype}, not an image type "
                    f"({' or '.join(IMAGE_TYPES)}). Topics in the bag:\n{self.describe_topics()}"
                )
            return requested, by_name[requested].msgtype
        images = [t for t in self.topics if t.msgtype in IMAGE_TYPES and t.name != exclude]  # not the depth
        if len(images) == 1:
            return images[0].name, images[0].msgtype
        if not images:
            raise TopicNotFoundError(
                f"bag {self.path} has no image topic ({' or '.join(IMAGE_TYPES)}). Topics in the bag:\n"
                f"{self.describe_topics()}"
            )
        raise TopicNotFoundError(
            f"bag {self.path} has {len(images)} image topics; choose one with --image-topic:\n"
            + self.describe_topics(images)
        )

    def _choose_depth_topics(self, depth_topic: str | None, info_topic: str | None) -> tuple[str, str]:
        if not depth_topic:
            if info_topic:
                raise TopicNotFoundError("--camera-info-topic is read only with --depth-topic")
            return "", ""
        by_name = {t.name: t for t in self.topics}
        if depth_topic not in by_name or by_name[depth_topic].msgtype != IMAGE_TYPE:
            what = "is not in the bag" if depth_topic not in by_name else f"has type {by_name[depth_topic].msgtype}"
            raise TopicNotFoundError(f"depth topic {depth_topic!r} {what}; it must be a {IMAGE_TYPE} "
                                     f"(16UC1 or 32FC1, aligned to the colour image). Topics in the bag:\n"
                                     f"{self.describe_topics()}")
        if depth_topic == self.image_topic:
            raise TopicNotFoundError(f"--depth-topic {depth_topic} is the image topic; give the aligned depth topic")
        infos = [t for t in self.topics if t.msgtype == CAMERA_INFO_TYPE]
        if info_topic:
            if info_topic not in by_name or by_name[info_topic].msgtype != CAMERA_INFO_TYPE:
                raise TopicNotFoundError(f"camera info topic {info_topic!r} is not a {CAMERA_INFO_TYPE} topic of "
                                         f"the bag. CameraInfo topics:\n{self.describe_topics(infos)}")
            return depth_topic, info_topic
        if len(infos) != 1:
            which = "no CameraInfo topic" if not infos else f"{len(infos)} CameraInfo topics"
            raise TopicNotFoundError(f"bag {self.path} has {which}; choose the depth image's with "
                                     f"--camera-info-topic. Topics in the bag:\n"
                                     f"{self.describe_topics(infos or None)}")
        return depth_topic, infos[0].name

    def describe_topics(self, topics: list[TopicSummary] | None = None) -> str:
        rows = topics if topics is not None else self.topics
        if not rows:
            return "  (no topics)"
        return "\n".join(
            f"  {t.name}  [{t.msgtype}]  {'?' if t.count is None else t.count} messages" for t in rows
        )

    # ----- reading -------------------------------------------------------------------------------
    def records(self) -> Iterator[BagRecord]:
        """Image and prompt messages in bag order. Raises BagReadError where the bag is damaged."""
        wanted = {self.image_topic, *self.prompt_topics}
        if self.depth_topic:
            wanted |= {self.depth_topic, self.camera_info_topic}
        source = self._salvage_messages(wanted) if self._salvage_file else self._indexed_messages(wanted)
        image_index = 0
        for topic, msgtype, log_time, raw, definition in source:
            if topic == self.image_topic:
                yield BagRecord("image", topic, msgtype, log_time, raw, image_index, definition)
                image_index += 1
            elif topic == self.depth_topic:
                yield BagRecord("depth", topic, msgtype, log_time, raw, -1, definition)
            elif topic == self.camera_info_topic:
                yield BagRecord("camera_info", topic, msgtype, log_time, raw, -1, definition)
            else:
                yield BagRecord("prompt", topic, msgtype, log_time, raw, -1, definition)

    def _indexed_messages(self, wanted: set[str]):
        connections = [c for c in self._connections if c.topic in wanted]
        definitions = {c.id: _connection_definition(c) for c in connections}
        messages = self._reader.messages(connections=connections)
        while True:
            try:
                conn, log_time, raw = next(messages)
            except StopIteration:
                return
            except _DAMAGE_ERRORS as err:
                raise BagReadError(f"bag {self.path} is damaged: {_reason(err)}") from None
            yield conn.topic, conn.msgtype, log_time, bytes(raw), definitions[conn.id]

    def _salvage_messages(self, wanted: set[str]):
        name = self._salvage_file.name
        try:
            with self._salvage_file.open("rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                end_of_last_record = stream.tell()
                try:
                    for record in StreamReader(stream, validate_crcs=True).records:
                        # (a chunk is read whole before its messages come out: this is the chunk's end)
                        end_of_last_record = stream.tell()
                        if isinstance(record, Footer):
                            return  # the file was complete after all
                        if isinstance(record, Message):
                            channel = self._salvage_channels.get(record.channel_id)
                            if channel and channel[0] in wanted:
                                yield channel[0], channel[1], record.log_time, bytes(record.data), channel[2]
                except EndOfFile:
                    if end_of_last_record != size:
                        raise  # the file ends inside a record
        except _DAMAGE_ERRORS as err:
            raise BagReadError(
                f"bag {self.path} is truncated or corrupted: reading {name} stopped at the "
                f"damage ({_reason(err) or type(err).__name__})"
            ) from None
        raise BagReadError(
            f"bag {self.path} is incomplete: {name} ends after a complete record but without its "
            f"index/footer (every message in it was read; a recorder stopped before closing the file?)"
        )

    # ----- decoding ------------------------------------------------------------------------------
    def _store_for(self, definition: MessageDefinitionText | None, msgtype: str) -> Typestore:
        """Types for a message read sequentially from a damaged MCAP (AnyReader builds them for every
        readable bag, but cannot open one without a footer): the embedded definition when there is one
        (it is what the recorder used), else ROS 2 Jazzy + pam_ros."""
        if definition is None:
            return pam_ros_typestore()
        key = (definition, msgtype)
        if key not in self._stores:
            if definition.format == "msg":
                types = get_types_from_msg(definition.text, msgtype)
            else:
                types = {}
                for block in definition.text.split("=" * 80 + "\n"):
                    if block.startswith("IDL: "):
                        block = block.split("\n", 1)[1]
                    if block.strip():
                        types.update(get_types_from_idl(block))
            store = get_typestore(Stores.EMPTY)
            store.register(types)
            self._stores[key] = store
        return self._stores[key]

    def _deserialize(self, record: BagRecord):
        if self._reader is not None:
            return self._reader.deserialize(record.raw, record.msgtype)
        return self._store_for(record.definition, record.msgtype).deserialize_cdr(record.raw, record.msgtype)

    def decode_image(self, record: BagRecord) -> DecodedImage:
        """RGB pixels + header of an image record. Raises ImageDecodeError (message or pixels unusable)."""
        try:
            msg = self._deserialize(record)
        except Exception as err:  # rosbags raises several types on malformed CDR
            raise ImageDecodeError(f"not a valid {record.msgtype} message: {_reason(err)}") from None
        stamp_ns = stamp_ns_of(msg.header.stamp.sec, msg.header.stamp.nanosec)
        if record.msgtype == COMPRESSED_IMAGE_TYPE:
            rgb = decode_compressed(msg.format, msg.data)
        else:
            rgb = decode_image(msg.encoding, int(msg.width), int(msg.height), int(msg.step), msg.data,
                               is_bigendian=bool(msg.is_bigendian))
        return DecodedImage(rgb, stamp_ns, msg.header.frame_id)

    def decode_depth(self, record: BagRecord, depth_scale: float) -> tuple[np.ndarray, int, str]:
        """(metres HxW float32, header stamp ns, header frame_id) of a depth record. Raises DepthError."""
        try:
            msg = self._deserialize(record)
        except Exception as err:
            raise DepthError(f"not a valid {record.msgtype} message: {_reason(err)}") from None
        metres = depth_to_metres(msg.encoding, int(msg.width), int(msg.height), int(msg.step), msg.data,
                                 is_bigendian=bool(msg.is_bigendian), depth_scale=depth_scale)
        return metres, stamp_ns_of(msg.header.stamp.sec, msg.header.stamp.nanosec), msg.header.frame_id

    def decode_camera_info(self, record: BagRecord) -> tuple[int, CameraIntrinsics]:
        """(header stamp ns, intrinsics) of a CameraInfo record, K unchecked (the frames it pairs with
        are refused with the reason; engine/depth.py). Raises DepthError when unreadable."""
        try:
            msg = self._deserialize(record)
        except Exception as err:
            raise DepthError(f"not a valid {record.msgtype} message: {_reason(err)}") from None
        intrinsics = CameraIntrinsics.from_camera_info(list(msg.k), int(msg.width), int(msg.height), check=False)
        return stamp_ns_of(msg.header.stamp.sec, msg.header.stamp.nanosec), intrinsics

    def decode_prompt(self, record: BagRecord) -> PromptRequest:
        """A pam_ros/msg/Prompt record -> PromptRequest. Raises PromptMessageError when unusable."""
        try:
            msg = self._deserialize(record)
        except Exception as err:
            raise PromptMessageError(f"not a valid {record.msgtype} message: {_reason(err)}") from None
        return prompt_request_from_message(msg)

    def definition_of(self, topic: str) -> MessageDefinitionText | None:
        """The embedded definition of a topic's type, if the bag carries one."""
        if self._salvage_file:
            return next((d for t, _, d in self._salvage_channels.values() if t == topic), None)
        return next((_connection_definition(c) for c in self._connections if c.topic == topic), None)

    # ----- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - closing a damaged file must not hide the real error
                pass

    def __enter__(self) -> "BagInput":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_reader(target: Path) -> tuple[AnyReader | None, str]:
    """An opened rosbags AnyReader, or None and why it failed."""
    try:
        reader = AnyReader([target], default_typestore=pam_ros_typestore())
        reader.open()
    except _DAMAGE_ERRORS as err:
        return None, _reason(err)
    return reader, ""


def _connection_definition(conn: Connection) -> MessageDefinitionText | None:
    if conn.msgdef.format == MessageDefinitionFormat.MSG and conn.msgdef.data:
        return MessageDefinitionText("msg", conn.msgdef.data, conn.digest or "")
    if conn.msgdef.format == MessageDefinitionFormat.IDL and conn.msgdef.data:
        return MessageDefinitionText("idl", conn.msgdef.data, conn.digest or "")
    return None


def _schema_definition(schema: Schema | None) -> MessageDefinitionText | None:
    if schema is None or not schema.data:
        return None
    text = schema.data.decode("utf-8", "replace")
    if schema.encoding == "ros2msg":
        return MessageDefinitionText("msg", text)
    if schema.encoding == "ros2idl":
        return MessageDefinitionText("idl", text)
    return None


def _reason(err: BaseException) -> str:
    text = str(err.args[0]) if err.args else str(err)
    return text or type(err).__name__
