"""Annotator roster for the labelling app: names, salted scrypt password hashes, active flag.

The roster lives in `$CMR_DATA_DIR/annotators/roster.json`, is rewritten atomically (tmp + fsync +
rename) under an exclusive file lock, and never holds a plain-text password. Annotator names are
also the `annotator_id` of annotation records and part of annotation file names, so they are
restricted to `[a-z0-9][a-z0-9_-]{1,31}`; the `sim-expert-` prefix is reserved for simulated experts.

Public API:
- `ScryptParams`, `DEFAULT_SCRYPT` - password-hash cost (stored inside every hash).
- `roster_path(paths) -> Path`
- `load_roster(paths) -> dict[str, AnnotatorAccount]`
- `add_annotator(paths, name, password, params=DEFAULT_SCRYPT) -> AnnotatorAccount`
- `disable_annotator(paths, name) -> AnnotatorAccount`
- `authenticate(paths, name, password) -> bool` (constant work for unknown names)
- `known_annotator_ids(paths) -> set[str]` - every roster name, disabled ones included, because
  their earlier annotations stay valid.
- `RosterError` - bad name, duplicate, unknown name, unreadable roster file.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cmr_assets.fileio import write_atomically
from cmr_assets.settings import DataPaths

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{1,31}")
RESERVED_PREFIX = "sim-expert-"
MIN_PASSWORD_LENGTH = 8


class RosterError(ValueError):
    """A roster operation that cannot be done (the message says which name or file and why)."""


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost; n=2**15, r=8 costs about 32 MiB and ~0.1 s per hash, which slows guessing."""

    n: int = 2**15
    r: int = 8
    p: int = 1


DEFAULT_SCRYPT = ScryptParams()


@dataclass(frozen=True)
class AnnotatorAccount:
    """One roster entry; `password_hash` is `scrypt$n$r$p$salt$hash` (base64)."""

    name: str
    password_hash: str
    active: bool
    created_at: str
    disabled_at: str | None = None


def roster_path(paths: DataPaths) -> Path:
    """Where the roster lives (under the data dir, so `CMR_DATA_DIR` moves it too)."""
    return paths.root / "annotators" / "roster.json"


def _scrypt(password: str, salt: bytes, params: ScryptParams) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=params.n, r=params.r, p=params.p,
                          maxmem=256 * params.n * params.r, dklen=32)


def hash_password(password: str, params: ScryptParams = DEFAULT_SCRYPT) -> str:
    """Salted scrypt hash with its parameters, so the cost can change without breaking old hashes."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, params)
    b64 = base64.b64encode
    return f"scrypt${params.n}${params.r}${params.p}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, password_hash: str) -> bool:
    """Constant-time check of `password` against a `hash_password` string."""
    try:
        scheme, n, r, p, salt, digest = password_hash.split("$")
        if scheme != "scrypt":
            return False
        params = ScryptParams(int(n), int(r), int(p))
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), params)
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


@functools.cache
def _dummy_hash() -> str:
    """Verifying against this for unknown names keeps login time independent of whether a name exists."""
    return hash_password(secrets.token_hex(16))


def validate_name(name: str) -> str:
    """Return `name` if it can be an annotator id, else raise `RosterError` saying why."""
    if not NAME_PATTERN.fullmatch(name):
        raise RosterError(f"annotator name {name!r} must match {NAME_PATTERN.pattern} "
                          "(lower-case letters, digits, '_' or '-', 2-32 characters)")
    if name.startswith(RESERVED_PREFIX):
        raise RosterError(f"annotator name {name!r}: prefix {RESERVED_PREFIX!r} is reserved for "
                          "simulated experts")
    return name


def load_roster(paths: DataPaths) -> dict[str, AnnotatorAccount]:
    """All roster entries by name; an absent roster is empty, a corrupt one raises `RosterError`."""
    path = roster_path(paths)
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return {name: AnnotatorAccount(name=name, **fields)
                for name, fields in document["annotators"].items()}
    except (ValueError, KeyError, TypeError) as error:
        raise RosterError(f"{path}: unreadable roster ({error})") from error


def _write_roster(paths: DataPaths, roster: dict[str, AnnotatorAccount]) -> None:
    path = roster_path(paths)
    document = {"version": 1, "annotators": {
        name: {key: value for key, value in asdict(account).items() if key != "name"}
        for name, account in sorted(roster.items())}}
    write_atomically(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"), mode=0o600)


@contextmanager
def _locked_roster(paths: DataPaths) -> Iterator[dict[str, AnnotatorAccount]]:
    """Read-modify-write under an exclusive lock, so two CLI calls cannot lose each other's change."""
    folder = roster_path(paths).parent
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "roster.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        roster = load_roster(paths)
        yield roster
        _write_roster(paths, roster)


def add_annotator(paths: DataPaths, name: str, password: str,
                  params: ScryptParams = DEFAULT_SCRYPT) -> AnnotatorAccount:
    """Register a new active annotator; refuses taken names and passwords under 8 characters."""
    validate_name(name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise RosterError(f"annotator {name!r}: password must have at least {MIN_PASSWORD_LENGTH} characters")
    password_hash = hash_password(password, params)
    with _locked_roster(paths) as roster:
        if name in roster:
            raise RosterError(f"annotator {name!r} already exists in {roster_path(paths)}")
        account = AnnotatorAccount(name=name, password_hash=password_hash, active=True,
                                   created_at=datetime.now(UTC).isoformat(timespec="seconds"))
        roster[name] = account
    return account


def disable_annotator(paths: DataPaths, name: str) -> AnnotatorAccount:
    """Stop `name` from logging in (open sessions end at their next request); keeps the entry."""
    with _locked_roster(paths) as roster:
        if name not in roster:
            raise RosterError(f"annotator {name!r} is not in {roster_path(paths)}")
        account = AnnotatorAccount(**{**asdict(roster[name]), "active": False,
                                      "disabled_at": datetime.now(UTC).isoformat(timespec="seconds")})
        roster[name] = account
    return account


def authenticate(paths: DataPaths, name: str, password: str) -> bool:
    """True only for an active annotator with this password; unknown names cost the same time."""
    account = load_roster(paths).get(name)
    if account is None:
        verify_password(password, _dummy_hash())
        return False
    return verify_password(password, account.password_hash) and account.active


def known_annotator_ids(paths: DataPaths) -> set[str]:
    """Names whose annotation records the pipeline accepts (disabled ones too: their work stands)."""
    return set(load_roster(paths))
