"""The one rule the hub and the agent apply to every ``SERS_*`` variable and every flag value.

An empty (or blank) value counts as not given: the next source down (flag, then environment,
then the hub's ``--config`` file, then the default) decides. Compose, Helm and systemd set
variables empty as a matter of course (``SERS_TOKEN: ${SERS_TOKEN:-}``), and a script's
``--token "$TOKEN"`` with ``TOKEN`` unset passes an empty flag; neither may switch off a token
set elsewhere. A token *file* that was named but is empty is an error instead: someone meant
to set a token there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def given(value: str | None) -> str | None:
    """``value``, or ``None`` when it is missing, empty or only white space."""
    return value if value is not None and value.strip() else None


def env_value(env: Mapping[str, str], name: str) -> str | None:
    """The variable ``name`` under :func:`given`'s rule."""
    return given(env.get(name))


def read_token_file(path: str) -> str:
    """The token in ``path``, without surrounding white space.

    Raises ``ValueError`` with a message (no key name: the caller adds it) when the file cannot
    be read or holds no token.
    """
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not token:
        raise ValueError(f"{path} is empty (a token file must hold the token)")
    return token
