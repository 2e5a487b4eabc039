"""Secrets handed over as files (Docker and Kubernetes secrets): the ``*_FILE`` variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr


def read_secret_file(path: object) -> SecretStr | None:
    """The content of the file at ``path``, without its trailing newline; None when unset.

    Errors say what is wrong with the file and never quote its content.
    """
    if path is None or path == "":
        return None
    try:
        content = Path(str(path)).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ValueError(f"cannot read the file ({reason})") from None
    content = content.rstrip("\r\n")  # editors and `echo` end a file with a newline
    if not content:
        raise ValueError("the file is empty")
    return SecretStr(content)
