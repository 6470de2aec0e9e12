"""Building config dataclasses from plain (YAML) mappings."""

from dataclasses import fields


def dataclass_from_dict(kind, values, label=None, lists_to_tuples=True):
    """
    Build a flat config dataclass from a mapping; unknown keys raise ValueError.

    :param kind: the dataclass type.
    :param values: mapping of field values (None = all defaults).
    :param label: name used in the error message (default: the class name).
    :param lists_to_tuples: turn YAML lists into tuples (for frozen, hashable configs).
    """
    values = dict(values or {})
    unknown = set(values) - {item.name for item in fields(kind)}
    if unknown:
        raise ValueError(f'unknown {label or kind.__name__} keys: {sorted(unknown)}')
    if lists_to_tuples:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return kind(**values)
