# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""The value table's last rows: what an object none of its exact types
fits is converted to, for the in-process backends and the codec alike."""

import operator
import sys

def table_form(obj):
    """What the value table makes of an object that none of its exact rows
    (None, bool, int, float, str, list, tuple, dict, set, bytes) fits: an
    object that one of them, or this function again, turns into a value.

    It imports nothing: a row whose module user code has not imported
    cannot match, since no object of it can exist yet.
    """
    kind = type(obj)
    if hasattr(kind, "__index__"):  # numpy integers; numpy's bool_ refuses
        try:
            return operator.index(obj)
        except TypeError:
            pass
    real = _loaded("numbers", "Real")
    if real is not None and isinstance(obj, real) and hasattr(kind, "__float__"):
        return float(obj)  # numpy floats, Fraction
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()  # numpy arrays and scalars (bool_), array.array
    fields = _loaded("dataclasses", "fields")
    if fields is not None and hasattr(kind, "__dataclass_fields__") and not isinstance(obj, type):
        return {field.name: getattr(obj, field.name) for field in fields(obj)}
    mapping = _loaded("collections.abc", "Mapping")
    if mapping is not None and isinstance(obj, mapping):
        return dict(obj.items())
    date, time_of_day = _loaded("datetime", "date"), _loaded("datetime", "time")
    if date is not None and time_of_day is not None and isinstance(obj, (date, time_of_day)):
        return obj.isoformat()  # datetime is a date
    return str(obj)


def _loaded(module, name):
    """`module.name` if user code has imported the module, else None. A
    module another thread is importing right now may lack the name yet."""
    return getattr(sys.modules.get(module), name, None)
