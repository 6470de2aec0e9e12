"""Command-line helpers shared by every tool: ``KEY=VALUE`` items, range and path checks."""

import os
import sys

import yaml


def parse_assignment(item, flag):
    """
    Split ``KEY=VALUE`` into (key, value).

    VALUE is YAML (numbers, booleans, lists, mappings); a plain comma-separated word list
    (``P0,P1``) becomes a list of strings.

    :param item: the command-line text.
    :param flag: the option's name, for the error message.
    :raises ValueError: when ``item`` has no ``=``, no key, or a value that is not YAML.
    """
    key, sep, raw = item.partition('=')
    key = key.strip()
    if not sep or not key:
        raise ValueError(f'{flag} expects KEY=VALUE, got {item!r}')
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        problem = getattr(error, 'problem', None) or 'not valid YAML'
        raise ValueError(f'{flag} {item!r}: bad value ({problem})') from None
    if isinstance(value, str) and ',' in value:
        value = [word for word in value.split(',') if word]
    return key, value


def check_at_least(flag, value, minimum):
    """
    Check that an option's value is at least ``minimum``.

    :raises ValueError: naming the option, when it is smaller.
    """
    if value < minimum:
        raise ValueError(f'{flag} must be >= {minimum}, got {value}')


def check_positive(flag, value):
    """
    Check that an option's value is above zero (NaN is not).

    :raises ValueError: naming the option, when it is not.
    """
    if not value > 0:
        raise ValueError(f'{flag} must be > 0, got {value}')


def check_output_folder(flag, folder):
    """
    Create an output folder (and those above it) if missing, before a long run.

    :param flag: the option's name (and value), for the error message.
    :raises ValueError: when the folder cannot be made (a file is in the way) or written.
    """
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        reason = error.strerror or error
        raise ValueError(f'{flag}: cannot create folder {folder} ({reason})') from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f'{flag}: folder {folder} is not writable')


def check_output_file(flag, path):
    """
    Make sure a file can be written at ``path`` before a long run; create missing folders.

    :param flag: the option's name, for the error message.
    :param path: the file (None or empty: nothing to check).
    :raises ValueError: when ``path`` is a folder, or its folder cannot be made or written.
    """
    if not path:
        return
    if os.path.isdir(path):
        raise ValueError(f'{flag} {path}: is a folder, not a file')
    check_output_folder(f'{flag} {path}', os.path.dirname(os.path.abspath(path)))


def fail(prog, error, status=2):
    """Print ``PROG: error: ERROR`` on stderr (one line); return the exit status (2: usage)."""
    print(f'{prog}: error: {error}', file=sys.stderr, flush=True)
    return status
