"""What a spec must never hold, and how URLs are shown where people read them.

The patterns that recognise a credential (a key named like one, a URL query parameter
that carries one, a value shaped like a token), the URL check the data locations run, and
`redact_url` for logs, catalog rows and MLflow parameters. Kept apart from the models
because both the models (URL fields) and the loader (the walk over the raw YAML) use it,
and it needs neither.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit

# Keys that would put a secret into a spec (and from there into logs and MLflow).
SECRET_KEY_RE = re.compile(r"^(.*_)?(token|password|secret|api_?key|credentials?)$", re.I)
# Query parameters that carry a credential in a URL: the keys above, plus the names signed
# and authenticated URLs use (AWS SigV4, GCS, Azure SAS, generic auth/sig/key).
URL_SECRET_PARAM_RE = re.compile(
    r"^((.*[_-])?(token|password|secret|api_?key|key|credentials?|auth|authorization|sig|"
    r"signature)|x-amz-(security-token|credential|signature)|x-goog-(credential|signature))$",
    re.I,
)
# Values shaped like a credential wherever they appear (a token pasted into a description,
# a name_or_path or a revision): Hugging Face, AWS access keys, GitHub, OpenAI-style keys,
# bearer headers, JWTs.
TOKEN_VALUE_RE = re.compile(
    r"\bhf_[A-Za-z0-9]{30,}|\b(AKIA|ASIA)[A-Z0-9]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}|"
    r"\bsk-(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Z])[A-Za-z0-9_-]{20,}(?![/.])|\bBearer\s+[A-Za-z0-9._~+/=-]{16,}|"
    r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
)


REDACTED = "***"
# Query values this long could be a token under a name URL_SECRET_PARAM_RE does not know
# (real tokens are 20+ characters); shorter ones (download=1, ref=main) stay readable.
REDACT_VALUE_CHARS = 16


def redact_url(url: str) -> str:
    """`url` as logs, catalog rows and MLflow parameters show it: no user:password@, and
    every query value of REDACT_VALUE_CHARS or more characters replaced by ***. Specs with a
    known credential are refused at load; this covers the ones no rule recognises."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = "&".join(
        f"{key}={REDACTED if len(value) >= REDACT_VALUE_CHARS else value}"
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def check_url(url: str) -> None:
    """An http(s) URL without credentials in it (user:password@ or ?token=...)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https:// (got {url!r})")
    parts = urlsplit(url)
    secret_params = [k for k, _ in parse_qsl(parts.query) if URL_SECRET_PARAM_RE.search(k)]
    if parts.username or parts.password or secret_params:
        raise ValueError(
            "url holds a credential (user:password@ or a token/key query parameter); specs "
            "must not hold secrets: put it in the environment (e.g. HF_TOKEN) instead"
        )
