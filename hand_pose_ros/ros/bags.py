"""
Read and write rosbag2 depth recordings (MCAP or sqlite3) without a ROS install.

Uses the pure-Python ``rosbags`` library; messages are decoded with the same conversions
as the nodes (:mod:`hand_pose_ros.ros.conversions`), which work on ``rosbags``' message
objects. Depth images are paired with the camera_info of the same header stamp through
:class:`hand_pose_ros.core.pairing.StampPairer`; an image waits for a few more messages
(``lookahead``) for its info to arrive, then falls back to the latest info.

Usage::

    for frame in BagRecording('recording_bag'):       # DepthFrame(stamp_ns, depth, intrinsics)
        ...
    write_depth_bag('out_bag', frames, storage='mcap', encoding='16UC1')
"""

from collections import deque
import contextlib
import logging
from pathlib import Path
import sys

import numpy as np

from hand_pose_ros.core.camera import depth_to_metres, depth_to_millimetres
from hand_pose_ros.core.pairing import StampPairer
from hand_pose_ros.core.recordings import DepthFrame
from hand_pose_ros.ros.conversions import depth_from_image, intrinsics_from_camera_info

LOGGER = logging.getLogger(__name__)

IMAGE_TYPE = 'sensor_msgs/msg/Image'
INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
STORAGE_FORMATS = ('mcap', 'sqlite3')
WRITE_ENCODINGS = ('16UC1', '32FC1')
BAG_VERSION = 8


def _typestore():
    from rosbags.typesys import get_typestore, Stores

    return get_typestore(Stores.ROS2_HUMBLE)


def _stamp_ns(header):
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


@contextlib.contextmanager
def _bag_errors(path):
    """Turn the errors of ``rosbags`` on a damaged bag into a ValueError naming it."""
    import sqlite3

    from rosbags.rosbag2 import ReaderError

    errors = (ReaderError, sqlite3.DatabaseError)
    try:
        import apsw   # rosbags reads sqlite3 bags through it where it is installed

        errors += (apsw.Error,)
    except ImportError:
        pass
    try:
        yield
    except errors as error:
        raise ValueError(f'{path}: unreadable rosbag2 ({" ".join(str(error).split())})') \
            from None


def _pick_topic(topics, kind, wanted, hint):
    """Return the topic of type ``kind``: ``wanted`` if given, else the only (or hinted) one."""
    candidates = sorted(name for name, msgtype in topics.items() if msgtype == kind)
    if not candidates:
        raise ValueError(f'bag has no {kind} topic; its topics: {sorted(topics)}')
    if wanted is not None:
        if topics.get(wanted) != kind:
            raise ValueError(f'bag has no {kind} topic {wanted!r}; {kind} topics: {candidates}')
        return wanted
    if len(candidates) == 1:
        return candidates[0]
    hinted = [name for name in candidates if hint(name)]
    if len(hinted) == 1:
        return hinted[0]
    raise ValueError(f'cannot choose the {kind} topic among {candidates}; name it')


class BagRecording:
    """
    Depth frames of a rosbag2 recording, paired with camera_info (iterable several times).

    :param path: bag directory (with ``metadata.yaml``).
    :param depth_topic: depth image topic; default: the only Image topic, or the only one
        with 'depth' in its name.
    :param info_topic: camera_info topic; default: ``camera_info`` beside the depth topic,
        or the only CameraInfo topic.
    :param max_stamp_diff_ns: largest header stamp difference counted as a pair.
    :param lookahead: messages an image waits for its camera_info.
    :raises ValueError: missing or damaged bag, or no suitable topics (a bag damaged past
        its start raises it while being read).
    """

    def __init__(self, path, depth_topic=None, info_topic=None, max_stamp_diff_ns=1_000_000,
                 lookahead=8):
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        if not (self.path / 'metadata.yaml').is_file():
            raise ValueError(f'{self.path} is not a rosbag2 directory (no metadata.yaml)')
        if lookahead < 0:
            raise ValueError(f'lookahead must be >= 0, got {lookahead}')
        with _bag_errors(self.path), Reader(self.path) as reader:
            topics = {name: info.msgtype for name, info in reader.topics.items()}
            self.depth_topic = _pick_topic(topics, IMAGE_TYPE, depth_topic,
                                           lambda name: 'depth' in name)
            sibling = self.depth_topic.rsplit('/', 1)[0] + '/camera_info'
            self.info_topic = _pick_topic(topics, INFO_TYPE, info_topic,
                                          lambda name: name == sibling)
            if info_topic is None and self.info_topic != sibling:
                LOGGER.warning('%s: the depth images are paired with %s, the only camera_info '
                               'topic (not %s beside them); name the camera_info topic if it '
                               'belongs to another camera', self.path, self.info_topic,
                               sibling)
            self.num_frames = int(reader.topics[self.depth_topic].msgcount)
        self.max_stamp_diff_ns = int(max_stamp_diff_ns)
        self.lookahead = int(lookahead)
        # Frames of the last pass without a camera_info, and frames that could not be read
        # (an unsupported encoding, a camera_info without a camera matrix, ...).
        self.unpaired = self.rejected = 0
        self.description = (f'bag {self.path} ({self.depth_topic} + {self.info_topic}, '
                            f'{self.num_frames} frames)')

    def __len__(self):
        return self.num_frames

    def __iter__(self):
        from rosbags.rosbag2 import Reader

        typestore = _typestore()
        pairer = StampPairer(self.max_stamp_diff_ns, history=max(8, 4 * self.lookahead))
        pending = deque()
        intrinsics_cache = {}
        self.unpaired = self.rejected = 0

        def ready(flush):
            while pending:
                stamp_ns, image = pending[0]
                info, exact = pairer.match(stamp_ns)
                if not (exact or flush or len(pending) > self.lookahead):
                    return
                pending.popleft()
                if info is None:
                    self.unpaired += 1
                    if self.unpaired == 1:
                        LOGGER.warning('%s: depth images before the first camera_info are '
                                       'skipped', self.path)
                    continue
                key = id(info)
                try:
                    if key not in intrinsics_cache:
                        intrinsics_cache.clear()
                        intrinsics_cache[key] = (info, intrinsics_from_camera_info(info))
                    frame = DepthFrame(stamp_ns, np.array(depth_from_image(image)),
                                       intrinsics_cache[key][1], str(image.header.frame_id))
                    # A camera_info of another image size (a ROI, a resolution change):
                    # skipped as the folder reader skips it, not a failure later on.
                    frame.intrinsics.check_image(frame.depth)
                except ValueError as error:
                    self.rejected += 1
                    if self.rejected == 1:
                        LOGGER.warning('%s: unusable depth frames are skipped (the first, '
                                       'at %d ns: %s)', self.path, stamp_ns, error)
                    continue
                yield frame

        with _bag_errors(self.path), Reader(self.path) as reader:
            connections = [c for c in reader.connections
                           if c.topic in (self.depth_topic, self.info_topic)]
            for connection, _, raw in reader.messages(connections=connections):
                msg = typestore.deserialize_cdr(raw, connection.msgtype)
                if connection.topic == self.info_topic:
                    pairer.add(_stamp_ns(msg.header), msg)
                else:
                    pending.append((_stamp_ns(msg.header), msg))
                yield from ready(flush=False)
            yield from ready(flush=True)


class DepthBagWriter:
    """
    Write depth frames and their camera_info into a new rosbag2 (context manager).

    Other topics can go into the same bag as CDR bytes (:meth:`add_connection`,
    :meth:`write_cdr`).

    :param path: bag directory to create (must not exist).
    :param storage: 'mcap' or 'sqlite3'.
    :param depth_topic: image topic (None: a bag of other topics only).
    :param info_topic: camera_info topic.
    :param encoding: '16UC1' (millimetres) or '32FC1' (metres, NaN invalid).
    :param frame_id: header frame id of frames without their own.
    """

    def __init__(self, path, storage='mcap', depth_topic='/camera/depth/image_raw',
                 info_topic='/camera/depth/camera_info', encoding='16UC1',
                 frame_id='camera_depth_optical_frame'):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGE_FORMATS:
            raise ValueError(f'storage must be one of {STORAGE_FORMATS}, got {storage!r}')
        if encoding not in WRITE_ENCODINGS:
            raise ValueError(f'encoding must be one of {WRITE_ENCODINGS}, got {encoding!r}')
        plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
        self.encoding = encoding
        self.frame_id = frame_id
        self.typestore = _typestore()
        self.writer = Writer(Path(path), version=BAG_VERSION, storage_plugin=plugin)
        self.writer.open()
        self.image_connection = self.info_connection = None
        if depth_topic is not None:
            self.image_connection = self.add_connection(depth_topic, IMAGE_TYPE)
            self.info_connection = self.add_connection(info_topic, INFO_TYPE)
        self.count = 0

    def add_connection(self, topic, msgtype):
        """Return a new topic of ``msgtype`` ('sensor_msgs/msg/PointCloud2', ...)."""
        return self.writer.add_connection(topic, msgtype, typestore=self.typestore)

    def write_cdr(self, connection, stamp_ns, data):
        """Write one message already serialized as CDR bytes."""
        self.writer.write(connection, int(stamp_ns), data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Finish the bag (writes metadata.yaml)."""
        self.writer.close()

    def _header(self, stamp_ns, frame_id):
        types = self.typestore.types
        stamp = types['builtin_interfaces/msg/Time'](
            sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))
        return types['std_msgs/msg/Header'](stamp=stamp, frame_id=frame_id or self.frame_id)

    def write(self, frame, info_first=True):
        """
        Write one :class:`DepthFrame` (image and camera_info with its stamp and frame).

        :param info_first: record the camera_info before the image (False tests pairing
            of infos that arrive late).
        """
        if self.image_connection is None:
            raise ValueError('this bag writer has no depth topic')
        types = self.typestore.types
        stamp_ns = int(frame.stamp_ns)
        if self.encoding == '16UC1':
            pixels = depth_to_millimetres(depth_to_metres(frame.depth))
        else:
            pixels = depth_to_metres(frame.depth).astype(np.float32)
        pixels = np.ascontiguousarray(pixels)
        image = types['sensor_msgs/msg/Image'](
            header=self._header(stamp_ns, frame.frame_id), height=pixels.shape[0],
            width=pixels.shape[1],
            encoding=self.encoding, is_bigendian=sys.byteorder == 'big',
            step=int(pixels.strides[0]), data=pixels.view(np.uint8).ravel())
        k = frame.intrinsics.matrix
        info = types['sensor_msgs/msg/CameraInfo'](
            header=self._header(stamp_ns, frame.frame_id), height=frame.intrinsics.height,
            width=frame.intrinsics.width, distortion_model='plumb_bob', d=np.zeros(5),
            k=k.ravel().astype(np.float64), r=np.eye(3).ravel(),
            p=np.hstack([k, np.zeros((3, 1))]).ravel().astype(np.float64), binning_x=0,
            binning_y=0, roi=types['sensor_msgs/msg/RegionOfInterest'](
                x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
        records = [(self.info_connection, info), (self.image_connection, image)]
        for connection, msg in records if info_first else records[::-1]:
            self.write_cdr(connection, stamp_ns,
                           self.typestore.serialize_cdr(msg, connection.msgtype))
        self.count += 1


def write_depth_bag(path, frames, **options):
    """Write an iterable of :class:`DepthFrame` into a new bag; return the frame count."""
    with DepthBagWriter(path, **options) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.count
