"""
TensorRT engine cache: key logic, stale detection and storage (plain Python).

An engine is valid only for the exact ONNX file, input shapes, maximum batch, precision,
INT8 calibration crops, TensorRT version and GPU model it was built for. :class:`EngineKey`
holds those fields; its sha256 digest is stored in a JSON file beside the engine. On lookup
a missing engine is built, an engine whose stored key differs is rebuilt once with a log
line naming the fields that changed, and ``force_rebuild`` rebuilds regardless.

Default directory: ``$XDG_CACHE_HOME/hand_pose_ros/engines`` (``~/.cache/...`` when unset),
which survives restarts, unlike /tmp.
"""

from dataclasses import asdict, dataclass
import hashlib
import json
import logging
import os
from pathlib import Path

from hand_pose_ros.core.model_io import write_atomic

LOGGER = logging.getLogger(__name__)

PRECISIONS = ('fp32', 'fp16', 'int8')
ENGINE_SUFFIX = '.engine'
KEY_SUFFIX = '.key.json'
CALIBRATION_SUFFIX = '.calib'


def default_cache_dir():
    """Return the default engine directory under the user's cache (XDG_CACHE_HOME honoured)."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'hand_pose_ros' / 'engines'


def prepare_cache_dir(cache_dir=None):
    """
    Create the engine directory if needed and check that it is writable.

    :param cache_dir: directory, or None for :func:`default_cache_dir`.
    :return: the directory as a Path.
    :raises ValueError: the path is not a directory or cannot be written.
    """
    # Resolve (home, relative parts, symlinks) before anything is written, so the checks and
    # every later write apply to the directory that is really used.
    path = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()).resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(f'engine cache path {path} exists and is not a directory')
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f'engine cache directory {path} cannot be created ({error})') from None
    # Probe with a real write: os.access says yes to root even on read-only mounts.
    probe = path / f'.write-probe-{os.getpid()}'
    try:
        probe.write_bytes(b'')
        probe.unlink()
    except OSError as error:
        raise ValueError(f'engine cache directory {path} is not writable ({error.strerror}); '
                         'set another engine cache directory') from None
    return path


@dataclass(frozen=True)
class EngineKey:
    """
    Everything an engine depends on.

    :param onnx_sha256: sha256 of the ONNX file.
    :param input_shapes: ((name, (C, H, W)), ...) per input, batch axis excluded.
    :param max_batch: largest batch the engine accepts.
    :param precision: 'fp32', 'fp16' or 'int8'.
    :param trt_version: TensorRT version string.
    :param gpu_name: GPU model name.
    :param calibration: fingerprint of the crops an INT8 engine is calibrated on ('' for the
        other precisions).
    :param gpu_capability: compute capability ('8.7'), and
    :param gpu_sm_count: multiprocessors: the Jetson Orin modules share one name but not
        these, and an engine is tuned for the device it was built on.
    """

    onnx_sha256: str
    input_shapes: tuple
    max_batch: int
    precision: str
    trt_version: str
    gpu_name: str
    calibration: str = ''
    gpu_capability: str = ''
    gpu_sm_count: int = 0

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')
        if int(self.max_batch) < 1:
            raise ValueError(f'max_batch must be at least 1, got {self.max_batch}')
        shapes = tuple((str(name), tuple(int(d) for d in shape))
                       for name, shape in self.input_shapes)
        object.__setattr__(self, 'input_shapes', shapes)
        object.__setattr__(self, 'max_batch', int(self.max_batch))

    def to_dict(self):
        """Return the key fields as JSON-friendly data."""
        data = asdict(self)
        data['input_shapes'] = [[name, list(shape)] for name, shape in self.input_shapes]
        return data

    @classmethod
    def from_dict(cls, data):
        """Rebuild a key from :meth:`to_dict` output."""
        fields = dict(data)
        fields['input_shapes'] = tuple((name, tuple(shape))
                                       for name, shape in fields['input_shapes'])
        return cls(**fields)

    def digest(self):
        """Return the sha256 hex digest of the canonical JSON of the key."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(',', ':'))
        return hashlib.sha256(text.encode('utf-8')).hexdigest()

    def changed_fields(self, other):
        """Return the names of the fields that differ from another key."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [name for name in mine if mine[name] != theirs.get(name)]


class EngineCache:
    """
    Engine files named ``<stem>_<precision>_b<max_batch>.engine`` with a key file beside.

    :param cache_dir: directory, or None for :func:`default_cache_dir`.
    """

    def __init__(self, cache_dir=None):
        self.directory = prepare_cache_dir(cache_dir)

    def engine_path(self, stem, key):
        """Return the engine path for a model stem and key."""
        return self.directory / f'{stem}_{key.precision}_b{key.max_batch}{ENGINE_SUFFIX}'

    def calibration_path(self, stem, key, fresh=False):
        """
        Return the INT8 calibration table of an engine, named for its key.

        A table is only valid for the model and inputs it was measured on: any other
        table of the same engine name is removed, and with ``fresh`` this one too, so
        TensorRT calibrates again instead of reusing old scales.
        """
        engine = self.engine_path(stem, key)
        path = engine.with_name(f'{engine.stem}.{key.digest()[:16]}{CALIBRATION_SUFFIX}')
        for old in self.directory.glob(f'{engine.stem}.*{CALIBRATION_SUFFIX}'):
            if old != path or fresh:
                old.unlink(missing_ok=True)
        return path

    def key_path(self, engine_path):
        """Return the key file that sits beside an engine."""
        return Path(str(engine_path)[:-len(ENGINE_SUFFIX)] + KEY_SUFFIX)

    def check(self, stem, key):
        """
        Return (engine_path, reason): reason None when the cached engine matches ``key``.

        Reasons: 'missing', 'no key file', 'unreadable key file', 'stale: <fields> changed',
        or 'engine file does not match its key file' (damaged, or replaced by another writer).
        """
        return self._lookup(stem, key)[:2]

    def _lookup(self, stem, key):
        """Return (engine_path, reason, engine bytes checked against the key file or None)."""
        path = self.engine_path(stem, key)
        if not path.is_file():
            return path, 'missing', None
        key_path = self.key_path(path)
        if not key_path.is_file():
            return path, 'no key file', None
        try:
            stored = json.loads(key_path.read_text(encoding='utf-8'))
            stored_key = EngineKey.from_dict(stored['key'])
        except (OSError, ValueError, KeyError, TypeError):
            return path, 'unreadable key file', None
        if stored.get('digest') != key.digest() or stored_key != key:
            changed = ', '.join(key.changed_fields(stored_key)) or 'digest'
            return path, f'stale: {changed} changed', None
        # The bytes that are hashed are the bytes returned: another process replacing the
        # file in between cannot hand this one an engine its key file does not describe.
        try:
            data = path.read_bytes()
        except OSError:
            return path, 'missing', None
        if stored.get('engine_sha256') != hashlib.sha256(data).hexdigest():
            return path, 'engine file does not match its key file', None
        return path, None, data

    def store(self, stem, key, engine_bytes):
        """
        Write an engine and its key atomically; return the engine path.

        :raises OSError: the files cannot be written (e.g. the disk is full); no engine or
            key file of ``stem`` is then left behind, so the next start rebuilds.
        """
        path = self.engine_path(stem, key)
        record = {'digest': key.digest(), 'key': key.to_dict(),
                  'engine_sha256': hashlib.sha256(bytes(engine_bytes)).hexdigest()}
        try:
            write_atomic(path, bytes(engine_bytes))
            write_atomic(self.key_path(path), json.dumps(record, indent=2).encode('utf-8'))
        except OSError:
            path.unlink(missing_ok=True)
            self.key_path(path).unlink(missing_ok=True)
            raise
        return path

    def load_or_build(self, stem, key, build, force_rebuild=False):
        """
        Return (engine_bytes, status) with status 'hit', 'built' or 'rebuilt'.

        An engine that cannot be stored (full or failing disk) is still returned, with
        ``, not cached (<reason>)`` appended to the status and a warning logged.

        :param build: callable returning serialized engine bytes; called at most once.
        :param force_rebuild: rebuild even when the cached engine matches.
        """
        path, reason, data = self._lookup(stem, key)
        if reason is None and not force_rebuild:
            LOGGER.info('TensorRT engine cache hit: %s', path)
            return data, 'hit'
        if force_rebuild:
            reason = 'forced rebuild'
        status = 'built' if reason == 'missing' else 'rebuilt'
        LOGGER.warning('TensorRT engine %s: %s; building it now (this takes a while)',
                       path, reason)
        engine_bytes = build()
        if not engine_bytes:
            raise RuntimeError(f'TensorRT engine build for {path} produced no engine')
        try:
            self.store(stem, key, engine_bytes)
        except OSError as error:
            LOGGER.warning('TensorRT engine %s %s but not cached: cannot write to %s (%s); '
                           'it will be rebuilt at the next start', path, status,
                           self.directory, error.strerror)
            return bytes(engine_bytes), f'{status}, not cached ({error.strerror})'
        LOGGER.info('TensorRT engine %s %s (%d bytes)', path, status, len(engine_bytes))
        return bytes(engine_bytes), status
