"""``KEY=VALUE`` command-line assignments, parsed the same way by every tool."""

import yaml


def parse_assignment(item, flag):
    """
    Split ``KEY=VALUE`` into (key, value).

    VALUE is YAML (numbers, booleans, lists, mappings); a plain comma-separated word list
    (``P0,P1``) becomes a list of strings.

    :param item: the command-line text.
    :param flag: the option's name, for the error message.
    :raises ValueError: when ``item`` has no ``=`` or no key.
    """
    key, sep, raw = item.partition('=')
    key = key.strip()
    if not sep or not key:
        raise ValueError(f'{flag} expects KEY=VALUE, got {item!r}')
    value = yaml.safe_load(raw)
    if isinstance(value, str) and ',' in value:
        value = [word for word in value.split(',') if word]
    return key, value
