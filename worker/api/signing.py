"""Build and sign a ScaleEngine request: the one signing function of the project.

The recipe is the vendor's PHP example: ``json_encode`` the request array, HMAC-SHA256 it with
the secret, base64 the digest, add it as the last key ``signature`` and ``json_encode`` again.
The result is posted as the form field ``json``. Nothing here keeps or logs what it builds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from worker.api.phpjson import php_json_encode
from worker.model.targets import CloseJob

CLOSE_COMMAND = "stream.close"


def request_fields(
    *,
    command: str,
    api_key: str,
    timestamp: int,
    cdn: int,
    job: CloseJob,
    origin_url: str | None,
) -> dict[str, str | int]:
    """The request array in the vendor example's key order (the HMAC depends on it)."""
    fields: dict[str, str | int] = {
        "command": command,
        "api_key": api_key,
        "timestamp": timestamp,
        "cdn": cdn,
    }
    fields.update(job.target.as_fields())
    if origin_url is not None:
        fields["origin_url"] = origin_url
    return fields


def signature(fields: dict[str, str | int], secret: str) -> str:
    """base64(HMAC-SHA256(json_encode(fields), secret)), standard padded base64."""
    return _sign(php_json_encode(fields), secret)


def signed_body(fields: dict[str, str | int], secret: str) -> str:
    """The value of the ``json`` form field: the fields plus ``signature`` as the last key.

    Written from the signed encoding itself rather than by encoding it all again: PHP writes
    an array as its members in order between braces, so the last member goes before the
    closing brace; the signature is base64, whose one character PHP escapes is ``/``.
    """
    signed = {name: value for name, value in fields.items() if name != "signature"}
    encoded = php_json_encode(signed)
    member = '"signature":"' + _sign(encoded, secret).replace("/", "\\/") + '"'
    return f"{encoded[:-1]},{member}}}" if signed else f"{{{member}}}"


def _sign(encoded: str, secret: str) -> str:
    digest = hmac.new(secret.encode("utf-8"), encoded.encode("ascii"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")
