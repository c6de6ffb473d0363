"""Strategies for hostile input: any JSON, and valid bodies with some fields made absurd."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

ABSURD: list[Any] = [
    0,
    -1,
    1,
    2**31,
    2**53 - 1,
    2**53,
    2**63,
    2**64 + 1,
    10**20,
    -(10**20),
    10**300,
    0.0,
    -0.0,
    1.5,
    1e20,
    1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
    True,
    False,
    None,
    "",
    "0",
    "1",
    "-1",
    "1e3",
    "١",
    "a" * 300,
    "\x00",
    "\ud800",
    "../..",
    [],
    [1],
    {},
    {"a": 1},
]
"""values that broke or nearly broke parsers somewhere: bounds, types, unicode."""

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(ABSURD)
)
"""what ``json.loads`` can give for a scalar (it accepts NaN and Infinity; ints up to 4300 digits)."""

json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=25,
)


def near(valid: dict[str, Any], extra: st.SearchStrategy[Any] = json_values) -> st.SearchStrategy[Any]:
    """``valid`` with some fields replaced by ``extra`` values, some dropped, maybe an unknown one added."""
    keys = sorted(valid)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        body = dict(valid)
        for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
            body[key] = draw(extra)
        for key in draw(st.lists(st.sampled_from(keys), max_size=1, unique=True)):
            if draw(st.booleans()):
                body.pop(key, None)
        if draw(st.integers(0, 9)) == 0:
            body[draw(st.text(max_size=8))] = draw(extra)
        return body

    return build()


def bodies(valid: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Mostly near-valid objects, some arbitrary JSON."""
    return near(valid) | near(valid, st.sampled_from(ABSURD)) | json_values
