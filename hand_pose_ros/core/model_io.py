"""
Save and load trained networks: safetensors weights plus a YAML model card.

A model directory holds, for a model called ``name``:

- ``name.safetensors``: the state dict (tensors only, no pickled code);
- ``name.yaml``: the model card: network registry name, build config, input spec, the
  joint grouping of grouped models, free-form training information (data, seed, crop cube,
  metrics) and, under ``files``, the size and sha256 of every model file (weights, ONNX
  exports). :func:`verify_card_files` checks them all and :func:`load_model` refuses a file
  that is missing, truncated or altered, naming the file and the reason. The card's own
  fields are covered by ``card_sha256``, its first line: :func:`read_card` refuses a card
  cut short or changed since it was written (a card without the line is read unchecked).

The module imports torch and safetensors only inside the functions that need them.
"""

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
import threading

import yaml

LOGGER = logging.getLogger(__name__)

CARD_FORMAT_VERSION = 1
WEIGHTS_SUFFIX = '.safetensors'
CARD_SUFFIX = '.yaml'
OUTPUT_NAMES = ('joints', 'confidence')
# Card fields written by this module; ``extra`` fields may not reuse them.
RESERVED_FIELDS = ('format_version', 'name', 'network', 'config', 'inputs', 'outputs',
                   'weights', 'files', 'grouping', 'onnx', 'onnx_int8', 'quantization',
                   'card_sha256')
CARD_DIGEST_KEY = 'card_sha256'


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


def card_digest(card):
    """Return the sha256 of a card's fields but its digest (canonical JSON of plain data)."""
    body = {key: value for key, value in plain_data(card).items() if key != CARD_DIGEST_KEY}
    # default=str: YAML dates and sets a card may hold have no JSON form.
    text = json.dumps(body, sort_keys=True, separators=(',', ':'), default=str)
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


def write_card(card_path, card):
    """Write a card dict as YAML atomically (temporary file + rename), its digest first."""
    body = {key: value for key, value in plain_data(card).items() if key != CARD_DIGEST_KEY}
    text = yaml.safe_dump({CARD_DIGEST_KEY: card_digest(body), **body}, sort_keys=False)
    write_atomic(Path(card_path), text.encode('utf-8'))


@contextlib.contextmanager
def atomic_file(path):
    """
    Yield a binary stream that replaces ``path`` when the block ends (no half-written files).

    The data goes to a temporary beside ``path``, named for this process and thread so that
    two writers of one file never share it, is flushed to disk, and is renamed over ``path``.
    On an error (e.g. a full disk) the temporary is removed and the error re-raised; an
    existing ``path`` is left as it was.
    """
    path = Path(path)
    temporary = path.with_name(f'{path.name}.{os.getpid()}.{threading.get_ident()}.partial')
    try:
        with open(temporary, 'wb') as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomic(path, data):
    """Write bytes to a file with :func:`atomic_file`."""
    with atomic_file(path) as stream:
        stream.write(data)


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
    files = card['files']
    if not isinstance(files, dict) or not all(
            _plain_file_name(name) and isinstance(record, dict)
            and isinstance(record.get('bytes'), int) and isinstance(record.get('sha256'), str)
            for name, record in files.items()):
        raise ModelFileError(f'model card {card_path}: files must map names of files beside '
                             'the card to their bytes and sha256')
    digest = card.get(CARD_DIGEST_KEY)
    if digest is not None and digest != card_digest(card):
        raise ModelFileError(
            f'model card {card_path}: its fields do not match its {CARD_DIGEST_KEY} (the card '
            f'is damaged, e.g. cut short, or was edited by hand: set such changes with '
            f'load_estimator arguments or node parameters, or delete the {CARD_DIGEST_KEY} '
            f'line to use the edited card)')
    # The name becomes the names of the files an export writes beside the card.
    if 'name' in card and not (isinstance(card['name'], str) and _plain_file_name(card['name'])
                               and not card['name'].startswith('.')):
        raise ModelFileError(f'model card {card_path}: name must be a plain file stem, got '
                             f'{card["name"]!r}')
    if verify:
        verify_card_files(card_path, card)
    return card


def verify_card_files(card_path, card, names=None):
    """
    Check size and sha256 of the files listed in the card, naming the culprit.

    :param names: the listed file names to check (None: every one).
    """
    directory = Path(card_path).parent
    for file_name, record in card['files'].items():
        if names is not None and file_name not in names:
            continue
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


def card_file(card_path, card, key, section=None):
    """
    Return the path of the file a card field names (e.g. 'weights', 'onnx').

    The name must be a file beside the card that the card lists under ``files``, so that its
    size and checksum are verified: a card cannot point at another directory's files.

    :param section: a section of the card holding the field instead (e.g. its finder).
    """
    holder = card if section is None else section
    if key not in holder:
        raise ModelFileError(f'model card {card_path}: no {key!r} file recorded')
    name = holder[key]
    if not _plain_file_name(name):
        raise ModelFileError(f'model card {card_path}: {key} must name a file beside the '
                             f'card, got {name!r}')
    if name not in card['files']:
        raise ModelFileError(f'model card {card_path}: {key} file {name} is not listed (with '
                             f'its checksum) under files')
    return Path(card_path).parent / name


def _plain_file_name(name):
    return isinstance(name, str) and name not in ('', '.', '..') and Path(name).name == name


def load_model(card_path, device='cpu', verify=True):
    """
    Rebuild a network from its card and load its verified weights (eval mode).

    :param card_path: path of ``name.yaml``.
    :param device: torch device for the model.
    :param verify: check every file the card lists (True), none (False) or only the weights
        ('weights': for tools that write the other files again, such as the export).
    :return: (model, card).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hand_pose_ros.core.models import build_model

    card = read_card(card_path, verify=verify is True)
    weights_path = card_file(card_path, card, 'weights')
    if verify == 'weights':
        verify_card_files(card_path, card, [card['weights']])
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
