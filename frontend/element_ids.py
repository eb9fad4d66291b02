"""The wall's element ids: one scheme for the page, the pushed fragments, the scene and app.js.

Node names are ``[A-Za-z0-9][A-Za-z0-9._-]{0,62}``: a name may itself end in anything a suffix
could say (``gpu1-host``, ``gpu1-gpu-0``), so an id made of the name and then a suffix names two
elements at once. Here the kind of element comes first and the node name last, whole:

==========================  ==========================
``node-<name>``             the card
``host-<name>``             its host part
``gpu-<index>-<name>``      GPU ``<index>``'s row
``spark-cpu-<name>``        the CPU and memory sparkline
``spark-gpu-<index>-<name>``  GPU ``<index>``'s sparkline
==========================  ==========================

The people board (``/users``, the wall's ``?panel=users``) is ``people``, its row of a user
``user-<hex>``: the user name's UTF-8 bytes in hex (:func:`person_id`), so any name, markup
and spaces included, gives one id of its own and two names never share one.

No prefix begins another, and a GPU index is digits (the protocol's ``0``..``999``), so it ends
at the first ``-``: an id names exactly one (kind, GPU index, node), for every node name. The
other ids of the wall (``nodes``, ``summary``, ``clock``...) begin with none of the prefixes.
The names need no escaping in an id (no whitespace), nor in CSS selectors, except for ``.``:
scripts look elements up with ``getElementById``.

app.js finds the card of a pushed part with :data:`PART_ID_PATTERN` (the same text;
``tests/test_element_ids.py`` holds the two together).
"""

from __future__ import annotations

import re
from typing import Literal

Kind = Literal["node", "host", "gpu", "spark-cpu", "spark-gpu"]
_PER_GPU = ("gpu", "spark-gpu")

PART_ID_PATTERN = r"^(?:host|gpu-[0-9]+|spark-cpu|spark-gpu-[0-9]+)-(.+)$"
"""A card's part (not the card itself); group 1 is the node name."""
PART_ID_RE = re.compile(PART_ID_PATTERN)


def element_id(kind: Kind, node_id: str, gpu_index: str = "") -> str:
    """The id of ``node_id``'s element of ``kind`` (``gpu_index`` for a GPU's row or sparkline)."""
    if kind in _PER_GPU:
        if not (gpu_index.isascii() and gpu_index.isdigit()):
            raise ValueError(f"a GPU index is digits, not {gpu_index!r}")
        return f"{kind}-{gpu_index}-{node_id}"
    return f"{kind}-{node_id}"


def node_of_part(part_id: str) -> str | None:
    """The node name in a part's id (what app.js reads); None for a card or any other id."""
    found = PART_ID_RE.fullmatch(part_id)
    return found[1] if found else None


PEOPLE_ID = "people"


def person_id(user: str) -> str:
    """The id of ``user``'s row on the people board."""
    return "user-" + user.encode("utf-8", "surrogatepass").hex()
