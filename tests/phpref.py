"""Ask real PHP what ``json_encode`` and the vendor's signature give, as a reference.

Rows reach PHP without passing through our own encoder: each row is one stdin line of
space-separated ``TYPE:BASE64(key):BASE64(value)`` items (TYPE ``s`` for a string, ``i`` for an
integer written in decimal), and PHP rebuilds the associative array in that order. PHP answers
one line per row, base64 of its output, or ``!`` and base64 of ``json_last_error_msg()`` when
``json_encode`` fails. All rows go to one ``php`` process.

Text is sent as UTF-8 with ``surrogatepass``, so a lone surrogate reaches PHP as the ill-formed
bytes it would be in a PHP string, and PHP's own refusal can be observed.
"""

from __future__ import annotations

import base64
import functools
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

import pytest

PHP = "php"
TIMEOUT_SECONDS = 60

_SCRIPT = r"""
$mode = $argv[1];
$secret = null;
if ($mode === 'sign') {
    $secret = base64_decode(rtrim(fgets(STDIN), "\n"), true);
}
while (($line = fgets(STDIN)) !== false) {
    $line = rtrim($line, "\n");
    $row = [];
    if ($line !== '') {
        foreach (explode(' ', $line) as $item) {
            [$type, $key, $value] = explode(':', $item);
            $key = base64_decode($key, true);
            $value = base64_decode($value, true);
            if ($type === 'i') {
                $int = intval($value);
                if ((string) $int !== $value) {
                    fwrite(STDERR, "integer out of range: $value\n");
                    exit(3);
                }
                $value = $int;
            }
            $row[$key] = $value;
        }
    }
    $json = json_encode($row);
    if ($json === false) {
        echo '!', base64_encode(json_last_error_msg()), "\n";
    } elseif ($mode === 'sign') {
        echo base64_encode(base64_encode(hash_hmac('sha256', $json, $secret, true))), "\n";
    } else {
        echo base64_encode($json), "\n";
    }
}
"""

Row = Mapping[str, str | int]


class PhpJsonError(Exception):
    """PHP's json_encode refused a row (``json_encode`` returned false)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"row {index}: PHP json_encode failed: {message}")
        self.index = index
        self.message = message


@functools.cache
def php_available() -> bool:
    """True when a working ``php`` CLI is on PATH."""
    if shutil.which(PHP) is None:
        return False
    try:
        done = subprocess.run(
            [PHP, "-r", "echo json_encode(['a' => '/']);"],
            capture_output=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
    except OSError:
        return False
    return done.returncode == 0 and done.stdout == b'{"a":"\\/"}'


def require_php() -> None:
    """Skip when php is missing; fail instead when running in CI, which installs php-cli."""
    if php_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("php (php-cli) is not available in CI, where it is installed: a defect")
    pytest.skip("php (php-cli) is not installed; PHP reference checks need it")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")


def _row_line(row: Row) -> str:
    items = []
    for key, value in row.items():
        if not isinstance(key, str):
            raise TypeError(f"keys must be str, not {type(key).__name__}")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TypeError(f"only str and int values are sent to PHP, not {type(value).__name__}")
        tag = "s" if isinstance(value, str) else "i"
        items.append(f"{tag}:{_b64(key)}:{_b64(str(value))}")
    return " ".join(items)


def _run(mode: str, rows: Sequence[Row], secret: str | None = None) -> list[str]:
    lines = [_row_line(row) for row in rows]
    if secret is not None:
        lines.insert(0, _b64(secret))
    stdin = "".join(line + "\n" for line in lines).encode("ascii")
    done = subprocess.run(
        [PHP, "-r", _SCRIPT, "--", mode],
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"php exited with {done.returncode}: {done.stderr.decode(errors='replace')}"
        )
    answers = done.stdout.decode("ascii").splitlines()
    if len(answers) != len(rows):
        raise RuntimeError(f"php answered {len(answers)} lines for {len(rows)} rows")
    results = []
    for index, answer in enumerate(answers):
        if answer.startswith("!"):
            raise PhpJsonError(index, base64.b64decode(answer[1:]).decode("utf-8", "replace"))
        results.append(base64.b64decode(answer, validate=True).decode("utf-8"))
    return results


def php_json_encode_many(rows: Sequence[Row]) -> list[str]:
    """``json_encode($row)`` for each row, from one PHP process. Raises PhpJsonError."""
    return _run("encode", rows)


def php_sign_many(rows: Sequence[Row], secret: str) -> list[str]:
    """The vendor's signature for each row, from one PHP process."""
    return _run("sign", rows, secret)


def php_sign(row: Row, secret: str) -> str:
    """``base64_encode(hash_hmac('sha256', json_encode($row), $secret, true))``."""
    return php_sign_many([row], secret)[0]
