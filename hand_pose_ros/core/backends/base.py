"""Pieces shared by the inference backends: model file resolution and input checks."""

import logging
from pathlib import Path

import numpy as np

from hand_pose_ros.core import model_io

LOGGER = logging.getLogger(__name__)
OUTPUT_NAMES = model_io.OUTPUT_NAMES
# Precisions the backends take ('auto': each backend's best for its device).
PRECISIONS = ('auto', 'fp32', 'fp16', 'int8')
_LOGGED = set()


class BackendUnavailableError(RuntimeError):
    """A backend cannot run on this machine (its package or its device is missing)."""


def log_once(level, message, *args):
    """Log a message (e.g. a backend fallback) once per process."""
    text = message % args if args else message
    if text not in _LOGGED:
        _LOGGED.add(text)
        LOGGER.log(level, text)


def resolve_onnx(model_path, int8=False):
    """
    Return the ONNX file for a model card (verified) or an ONNX path.

    :param model_path: ``<name>.yaml`` card (its ``onnx`` field is used) or ``<name>.onnx``.
    :param int8: use the card's INT8 copy (``onnx_int8``) instead.
    :raises ModelFileError: missing or corrupted file, a card without the export asked for,
        or an INT8 copy made from another float export than the card's.
    """
    path = Path(model_path)
    if path.suffix == model_io.CARD_SUFFIX:
        card = model_io.read_card(path)
        key = 'onnx_int8' if int8 else 'onnx'
        if key not in card:
            option = ' --int8' if int8 else ''
            raise model_io.ModelFileError(
                f'model card {path}: no {"INT8 " if int8 else ""}ONNX export recorded; run '
                f'hand_pose_export --card {path}{option}')
        if int8:
            _check_int8_source(path, card)
        return model_io.card_file(path, card, key)
    if path.suffix != '.onnx':
        raise ValueError(f'expected a model card (.yaml) or an ONNX file, got {path}')
    if not path.is_file():
        raise model_io.ModelFileError(f'model file {path}: missing')
    return path


def _check_int8_source(card_path, card):
    """Raise ModelFileError when the card's INT8 copy was not made from its float export."""
    source = card.get('quantization', {}).get('source', {})
    onnx_record = card['files'].get(card.get('onnx'), {})
    if source.get('sha256') is None or source.get('sha256') != onnx_record.get('sha256'):
        raise model_io.ModelFileError(
            f'model card {card_path}: the INT8 export {card["onnx_int8"]} was not made from '
            f'the current {card.get("onnx")}; run hand_pose_export --card {card_path} --int8')


def has_int8(model_path):
    """Return whether a model card records an INT8 ONNX export (False for ONNX files)."""
    path = Path(model_path)
    return (path.suffix == model_io.CARD_SUFFIX
            and 'onnx_int8' in model_io.read_card(path, verify=False))


def onnx_input_shapes(onnx_path):
    """Return [(name, batch or None, (C, H, W))] for the graph inputs of an ONNX file."""
    from google.protobuf.message import DecodeError
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as error:
        raise model_io.ModelFileError(
            f'model file {onnx_path}: not a readable ONNX file ({error})') from None
    initializers = {init.name for init in model.graph.initializer}
    shapes = []
    for tensor in model.graph.input:
        if tensor.name in initializers:
            continue
        dims = tensor.type.tensor_type.shape.dim
        values = [d.dim_value if d.HasField('dim_value') else None for d in dims]
        if len(values) != 4 or None in values[1:]:
            raise ValueError(f'{onnx_path}: input {tensor.name!r} must be NCHW with fixed '
                             f'C, H, W; got {values}')
        shapes.append((tensor.name, values[0], tuple(values[1:])))
    return shapes


def input_feeds(batch, input_shapes):
    """
    Turn a batch into {input name: contiguous float32 (B, C, H, W)} and check shapes.

    :param batch: (B, C, H, W) array for single-input models, or a dict name -> array.
    :param input_shapes: [(name, batch or None, (C, H, W))] as from :func:`onnx_input_shapes`.
    :return: (feeds, batch size).
    """
    names = [name for name, _, _ in input_shapes]
    if not isinstance(batch, dict):
        if len(names) != 1:
            raise ValueError(f'this model takes several inputs {names}; pass a dict')
        batch = {names[0]: batch}
    if set(batch) != set(names):
        raise ValueError(f'inputs must be exactly {names}, got {sorted(batch)}')
    feeds = {}
    sizes = set()
    for name, _, chw in input_shapes:
        array = np.ascontiguousarray(batch[name], dtype=np.float32)
        if array.ndim != 4 or array.shape[1:] != chw or array.shape[0] < 1:
            raise ValueError(f'input {name!r} must have shape (B, {", ".join(map(str, chw))}) '
                             f'with B >= 1, got {array.shape}')
        feeds[name] = array
        sizes.add(array.shape[0])
    if len(sizes) != 1:
        raise ValueError(f'all inputs need the same batch size, got {sorted(sizes)}')
    return feeds, sizes.pop()


def run_fixed_batch(run, feeds, batch_size, fixed):
    """
    Run a fixed-batch model on any batch: split into chunks, pad the last, trim outputs.

    :param run: callable(feeds) -> dict of (fixed, ...) outputs.
    :param fixed: the model's batch size.
    """
    if batch_size == fixed:
        return run(feeds)
    chunks = []
    for start in range(0, batch_size, fixed):
        chunk = {}
        for name, array in feeds.items():
            part = array[start:start + fixed]
            if part.shape[0] < fixed:
                pad = np.repeat(part[-1:], fixed - part.shape[0], axis=0)
                part = np.concatenate([part, pad], axis=0)
            chunk[name] = part
        chunks.append(run(chunk))
    return {name: np.concatenate([c[name] for c in chunks], axis=0)[:batch_size]
            for name in OUTPUT_NAMES}
