"""De-identification: keyed identifiers instead of patient data.

Why: outputs (DuckDB, images, logs) must not carry PatientName/ID, dates, institution, accession
number or free text. Ingestion therefore copies only a whitelist of technical header fields
(geometry, timing, matrix size, scanner model) and replaces the SeriesInstanceUID by a keyed hash:
without the key nobody can link a `scan_id` back to the source series, and with the same key the
same series always gets the same id (what makes re-ingestion idempotent).

Public API:
- `load_or_create_key(secret_dir: Path) -> bytes`: the 32-byte key in `secret_dir/scan_id.key`,
  created once with mode 0600 (never logged).
- `scan_id_for(series_uid: str, key: bytes) -> str`: first 16 hex chars of HMAC-SHA256.
- `study_key_for(study_uid: str | None, key: bytes) -> str | None`: keyed hash of a StudyInstanceUID,
  stored as `scans.study_key` so scans of one study (a repeated cine) can be kept together.
- `patient_group_for(patient_id, study_uid, scan_key, key) -> str`: keyed hash of the PatientID
  (else the StudyInstanceUID, else the series), stored as `scans.patient_group`: the unit of the
  train/val/test split, so two series of one patient never land on both sides.
- `source_root_hash(source_dir: Path, key: bytes) -> str`: keyed hash of a source folder path, so
  `rejected_files` can tell source folders apart without storing their absolute path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILE_NAME = "scan_id.key"
KEY_BYTES = 32
ID_HEX_CHARS = 16


def load_or_create_key(secret_dir: Path) -> bytes:
    """Read the scan-id key, creating it (random, mode 0600) on first use. Safe when runs race (e.g.
    partition runs starting together on a fresh data folder): the key is written whole to a private
    temporary file and linked into place, so a reader never sees a half-written key and every racer
    ends with the one key that won."""
    secret_dir.mkdir(parents=True, exist_ok=True)
    key_path = secret_dir / KEY_FILE_NAME
    if not key_path.exists():
        temporary = secret_dir / f".{KEY_FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, key_path)  # fails if another run's key got there first: that one is used
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    key = key_path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ValueError(f"{key_path}: expected a {KEY_BYTES}-byte key, found {len(key)} bytes")
    return key


def _keyed_hex(value: str, key: bytes) -> str:
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:ID_HEX_CHARS]


def scan_id_for(series_uid: str, key: bytes) -> str:
    """Stable, non-reversible scan id for a SeriesInstanceUID (16 hex chars)."""
    return _keyed_hex(series_uid, key)


def study_key_for(study_uid: str | None, key: bytes) -> str | None:
    """Keyed, non-reversible id of a StudyInstanceUID (None without one): links the scans of one study."""
    return _keyed_hex("study:" + study_uid, key) if study_uid else None


def patient_group_for(patient_id: str | None, study_uid: str | None, scan_key: str, key: bytes) -> str:
    """Keyed, non-reversible patient group of a series: by PatientID, falling back to the study, then
    to the series itself (exports with the PatientID removed still split by study)."""
    patient = (patient_id or "").strip()
    if patient:
        return _keyed_hex("patient:" + patient, key)
    return _keyed_hex("study:" + study_uid, key) if study_uid else _keyed_hex("series:" + scan_key, key)


def source_root_hash(source_dir: Path, key: bytes) -> str:
    """Keyed hash of the resolved source folder path (folder names may hold patient names)."""
    return _keyed_hex("source-root:" + str(Path(source_dir).resolve()), key)
