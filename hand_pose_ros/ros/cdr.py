"""
Little-endian CDR (XCDR1), the wire format of ROS 2 messages, written without message objects.

Building a Python message object and handing it to rclpy costs far more than the bytes it
becomes: every constructor builds its default sub-messages, and serialising walks every
attribute again. One hand's poses and transforms are about a hundred such objects. The
package's outputs are therefore written straight into CDR with :class:`CdrWriter` and
published as bytes (rclpy's ``Publisher.publish`` takes them as they are); subscribers
receive ordinary messages. :func:`matches_rclpy` tells whether the ROS installation at hand
writes a message the same way, which the nodes check once before they publish bytes.

Each primitive is aligned to its own size, counted from the end of the 4-byte encapsulation
header; a sequence is its element count (uint32) followed by its elements; a string is its
length including the terminating NUL (uint32) followed by its UTF-8 bytes and the NUL.
"""

import struct

import numpy as np

# Encapsulation header of little-endian plain CDR.
ENCAPSULATION = b'\x00\x01\x00\x00'
_PADDING = (b'', b'\x00', b'\x00' * 2, b'\x00' * 3, b'\x00' * 4, b'\x00' * 5, b'\x00' * 6,
            b'\x00' * 7)
_UINT32 = struct.Struct('<I')
_STAMP = struct.Struct('<iI')


def string(text):
    """
    Return the CDR bytes of a text, written at a 4-aligned offset.

    A text is a C string on the wire: it ends at its first NUL, as rclpy writes it (and as
    every subscriber, C++ or Python, reads it).
    """
    data = text.split('\x00', 1)[0].encode('utf-8') + b'\x00'
    return _UINT32.pack(len(data)) + data


def stamp(sec, nanosec):
    """Return the CDR bytes of a ``builtin_interfaces`` Time or Duration (aligned to 4)."""
    return _STAMP.pack(sec, nanosec)


def header(msg):
    """
    Return the CDR bytes of a ``std_msgs/Header`` (aligned to 4 where it is written).

    Its fields need at most 4-byte alignment, so the same bytes serve at any 4-aligned offset.
    """
    return stamp(msg.stamp.sec, msg.stamp.nanosec) + string(msg.frame_id)


class CdrWriter:
    """
    Append CDR fields to a message, padding each to its alignment.

    ``put`` takes bytes whose first primitive needs ``alignment`` and whose later primitives
    are aligned relative to their start (what :func:`string`, :func:`header` and a fragment
    written by another writer with ``encapsulation=False`` give at 4-byte alignment).
    """

    __slots__ = ('_chunks', '_size')

    def __init__(self, encapsulation=True):
        self._chunks = [ENCAPSULATION] if encapsulation else []
        self._size = 0

    def put(self, data, alignment=1):
        """Append ``data`` (bytes) after the padding its first primitive needs."""
        if not data:
            return
        padding = -self._size % alignment
        if padding:
            self._chunks.append(_PADDING[padding])
        self._chunks.append(data)
        self._size += padding + len(data)

    def uint32(self, *values):
        """Append uint32 values (also sequence lengths)."""
        self.put(struct.pack(f'<{len(values)}I', *values), 4)

    def float64s(self, values):
        """Append float64 values (any shape, C order); nothing for none, as CDR does."""
        self.put(np.ascontiguousarray(values, dtype='<f8').tobytes(), 8)

    def getvalue(self):
        """Return the message written so far."""
        return b''.join(self._chunks)


def matches_rclpy(data, msg_type):
    """
    Return whether rclpy reads ``data`` as ``msg_type`` and writes it back the same.

    rclpy leaves padding bytes uncleared and may append spare bytes, so its bytes must equal
    ``data`` wherever ``data`` is not zero and may differ only where it is (padding) or after
    its end.
    """
    from rclpy.serialization import deserialize_message, serialize_message

    try:
        again = serialize_message(deserialize_message(data, msg_type))
    except Exception:  # noqa: B902 -- rclpy raises several types for unreadable data
        return False
    if len(again) < len(data):
        return False
    ours = np.frombuffer(data, np.uint8)
    theirs = np.frombuffer(again, np.uint8)[:len(data)]
    return bool(np.all((ours == theirs) | (ours == 0)))
