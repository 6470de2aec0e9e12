"""
Save and load trained networks: safetensors weights plus a YAML model card.

A model directory holds, for a model called ``name``:

- ``name.safetensors``: the state dict (tensors only, no pickled code);
- ``name.yaml``: the model card: network registry name, build config, input spec, the
  joint grouping of grouped models, free-form training information (data, seed, crop cube,
  metrics) and, under ``files``, the size and sha256 of every model file (weights, ONNX
  exports). :func:`verify_card_files` checks them all and :func:`load_model` refuses a file
  that is missing, truncated or altered, naming the file and the reason.

The module imports torch and safetensors only inside the functions that need them.
"""

import hashlib
import logging
import os
from pathlib import Path

import yaml

LOGGER = logging.getLogger(__name__)

CARD_FORMAT_VERSION = 1
WEIGHTS_SUFFIX = '.safetensors'
CARD_SUFFIX = '.yaml'
OUTPUT_NAMES = ('joints', 'confidence')
# Card fields written by this module; ``extra`` fields may not reuse them.
RESERVED_FIELDS = ('format_version', 'name', 'network', 'config', 'inputs', 'outputs',
                   'weights', 'files', 'grouping', 'onnx', 'onnx_int8', 'quantization')


class ModelFileError(ValueError):
    """A model file is missing, truncated, altered or unreadable."""


def sha256_file(path):
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path):
    """Return the card entry {'bytes', 'sha256'} for a file."""
    path = Path(path)
    return {'bytes': path.stat().st_size, 'sha256': sha256_file(path)}


def input_spec(model):
    """Return the card's input description: name -> shape (with batch 'B') and dtype."""
    size = model.input_size
    channels = {'depth': 1, 'color': 3}
    return {name: {'shape': ['B', channels[name], size, size], 'dtype': 'float32'}
            for name in model.input_names}


def card_input_names(card):
    """Return a card's network input names, in order (cards without ``inputs``: depth)."""
    return tuple(card.get('inputs', {'depth': None}))


def save_model(model, directory, name, extra=None):
    """
    Write ``name.safetensors`` and the model card ``name.yaml`` into ``directory``.

    :param model: a network from :func:`hand_pose_ros.core.models.build_model`.
    :param directory: output directory (created if needed).
    :param name: model name, used for the file names.
    :param extra: dict of further card fields (training data, seed, crop cube, metrics);
        numpy scalars and arrays are stored as plain numbers and lists.
    :return: path of the card.
    """
    from safetensors.torch import save

    _check_name(name)
    extra = plain_data(extra or {})
    clashes = sorted(set(extra) & set(RESERVED_FIELDS))
    if clashes:
        raise ValueError(f'card fields {clashes} are written by save_model; pick other names')
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / f'{name}{WEIGHTS_SUFFIX}'
    state = {key: value.detach().cpu().contiguous() for key, value in
             model.state_dict().items()}
    # Serialise in memory and write with open() so the file gets the usual umask-based
    # permissions (readable by other users once installed).
    write_atomic(weights_path, save(state, metadata={'network': model.model_name}))
    card = {
        'format_version': CARD_FORMAT_VERSION,
        'name': name,
        'network': model.model_name,
        'config': dict(model.config),
        'inputs': input_spec(model),
        'outputs': list(OUTPUT_NAMES),
        'weights': weights_path.name,
        'files': {weights_path.name: file_record(weights_path)},
    }
    if hasattr(model, 'grouping'):
        card['grouping'] = model.grouping()
    card.update(extra)
    card_path = directory / f'{name}{CARD_SUFFIX}'
    write_card(card_path, card)
    return card_path


def plain_data(value):
    """Return ``value`` with numpy scalars / arrays and tuples turned into YAML-safe types."""
    if isinstance(value, dict):
        return {str(key): plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(item) for item in value]
    if hasattr(value, 'tolist'):  # numpy scalar or array
        return plain_data(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def write_card(card_path, card):
    """Write a card dict as YAML atomically (temporary file + rename)."""
    text = yaml.safe_dump(plain_data(card), sort_keys=False)
    write_atomic(Path(card_path), text.encode('utf-8'))


def write_atomic(path, data):
    """
    Write bytes to a file via a temporary file and a rename (no half-written files).

    On failure (e.g. a full disk) the temporary file is removed and the error re-raised;
    an existing ``path`` is left as it was.
    """
    temporary = path.with_name(path.name + '.partial')
    try:
        with open(temporary, 'wb') as handle:
            handle.write(data)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def register_file(card_path, file_path, key=None):
    """
    Record a file that lives beside the card (e.g. an ONNX export) with its checksum.

    :param key: card field that names the file (e.g. 'onnx'); optional.
    """
    card_path = Path(card_path)
    file_path = Path(file_path)
    if file_path.parent.resolve() != card_path.parent.resolve():
        raise ValueError(f'{file_path} must be in the card directory {card_path.parent}')
    card = read_card(card_path, verify=False)
    card['files'][file_path.name] = file_record(file_path)
    if key is not None:
        card[key] = file_path.name
    write_card(card_path, card)


def read_card(card_path, verify=True):
    """
    Read a model card; with ``verify`` check every listed file's size and sha256.

    :raises ModelFileError: missing, unreadable or malformed card, or a bad model file.
    """
    card_path = Path(card_path)
    if not card_path.is_file():
        raise ModelFileError(f'model card {card_path}: file not found')
    try:
        with open(card_path, encoding='utf-8') as handle:
            card = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise ModelFileError(f'model card {card_path}: cannot be parsed ({error})') from None
    required = ('network', 'config', 'weights', 'files')
    if not isinstance(card, dict) or any(key not in card for key in required):
        raise ModelFileError(
            f'model card {card_path}: not a model card (needs fields {", ".join(required)})')
    if verify:
        verify_card_files(card_path, card)
    return card


def verify_card_files(card_path, card):
    """Check size and sha256 of every file listed in the card, naming the culprit."""
    directory = Path(card_path).parent
    for file_name, record in card['files'].items():
        path = directory / file_name
        if not path.is_file():
            raise ModelFileError(f'model file {path}: missing (listed in {card_path})')
        size = path.stat().st_size
        if size != record['bytes']:
            state = 'truncated' if size < record['bytes'] else 'has extra bytes'
            raise ModelFileError(
                f'model file {path}: {state} ({size} bytes, card says {record["bytes"]})')
        if sha256_file(path) != record['sha256']:
            raise ModelFileError(
                f'model file {path}: sha256 mismatch (file altered or corrupted; card '
                f'{card_path} expects {record["sha256"]})')


def card_file(card_path, card, key):
    """Return the path of the file a card field names (e.g. 'weights', 'onnx')."""
    if key not in card:
        raise ModelFileError(f'model card {card_path}: no {key!r} file recorded')
    return Path(card_path).parent / card[key]


def load_model(card_path, device='cpu', verify=True):
    """
    Rebuild a network from its card and load its verified weights (eval mode).

    :param card_path: path of ``name.yaml``.
    :param device: torch device for the model.
    :return: (model, card).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hand_pose_ros.core.models import build_model

    card = read_card(card_path, verify=verify)
    weights_path = card_file(card_path, card, 'weights')
    try:
        state = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError) as error:
        raise ModelFileError(f'model file {weights_path}: unreadable safetensors ({error})'
                             ) from None
    model = build_model(card['network'], **card['config'])
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    if expected != found:
        problems = sorted(set(expected) ^ set(found)) + sorted(
            key for key in set(expected) & set(found) if expected[key] != found[key])
        raise ModelFileError(
            f'model file {weights_path}: weights do not match network {card["network"]!r} '
            f'with the card config ({len(problems)} tensors differ, e.g. {problems[:3]})')
    model.load_state_dict(state)
    model.to(device).eval()
    LOGGER.info('loaded %s (%s) from %s', card.get('name'), card['network'], weights_path)
    return model, card


def _check_name(name):
    if not name or Path(name).name != name or name.startswith('.'):
        raise ValueError(f'model name must be a plain file stem, got {name!r}')
