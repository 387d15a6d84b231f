"""Roster, password hashing and the `annotators` / `serve-labelling` CLI."""

from __future__ import annotations

import argparse
import io
import json
import stat

import pytest

from cmr_assets.app.cli import allowed_hosts_for, register_cli
from cmr_assets.labelling.roster import (
    RosterError,
    add_annotator,
    authenticate,
    disable_annotator,
    hash_password,
    known_annotator_ids,
    load_roster,
    roster_path,
    verify_password,
)
from cmr_assets.settings import DataPaths
from cmr_assets_tests.app.conftest import FAST_HASH


def test_add_authenticate_disable(tmp_path) -> None:
    paths = DataPaths(tmp_path)
    add_annotator(paths, "dr_lee", "s3cret-words", FAST_HASH)
    add_annotator(paths, "dr-kim", "s3cret-words", FAST_HASH)
    assert authenticate(paths, "dr_lee", "s3cret-words")
    assert not authenticate(paths, "dr_lee", "wrong-words")
    assert not authenticate(paths, "nobody", "s3cret-words")
    disable_annotator(paths, "dr_lee")
    assert not authenticate(paths, "dr_lee", "s3cret-words")
    assert known_annotator_ids(paths) == {"dr_lee", "dr-kim"}  # disabled people's work stays valid
    roster = load_roster(paths)
    assert roster["dr_lee"].active is False and roster["dr_lee"].disabled_at
    text = roster_path(paths).read_text()
    assert "s3cret" not in text
    assert roster["dr_lee"].password_hash != roster["dr-kim"].password_hash  # salted
    assert stat.S_IMODE(roster_path(paths).stat().st_mode) == 0o600
    assert json.loads(text)["version"] == 1


def test_default_hash_is_slow_scrypt() -> None:
    encoded = hash_password("another-secret")
    assert encoded.startswith("scrypt$32768$8$1$")
    assert verify_password("another-secret", encoded) and not verify_password("another-secreT", encoded)
    assert not verify_password("x", "md5$abc")


@pytest.mark.parametrize("name", ["A", "x", "has space", "../etc", "sim-expert-9", "a" * 33, "ünï"])
def test_bad_names_refused(tmp_path, name: str) -> None:
    with pytest.raises(RosterError, match="annotator name"):
        add_annotator(DataPaths(tmp_path), name, "long-enough", FAST_HASH)


def test_duplicates_short_passwords_unknown_and_corrupt_roster(tmp_path) -> None:
    paths = DataPaths(tmp_path)
    add_annotator(paths, "dr_lee", "long-enough", FAST_HASH)
    with pytest.raises(RosterError, match="already exists"):
        add_annotator(paths, "dr_lee", "long-enough", FAST_HASH)
    with pytest.raises(RosterError, match="at least 8"):
        add_annotator(paths, "dr_new", "short", FAST_HASH)
    with pytest.raises(RosterError, match="not in"):
        disable_annotator(paths, "ghost")
    roster_path(paths).write_text("{broken")
    with pytest.raises(RosterError, match="roster.json: unreadable roster"):
        load_roster(paths)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmr-assets")
    register_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_add_list_disable(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CMR_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO("a-good-password\n"))
    args = _parser().parse_args(["annotators", "add", "dr_lee", "--password-stdin"])
    assert args.func(args) == 0
    assert authenticate(DataPaths(tmp_path), "dr_lee", "a-good-password")
    monkeypatch.setattr("sys.stdin", io.StringIO("a-good-password\n"))
    assert args.func(args) == 2  # exists
    args = _parser().parse_args(["annotators", "disable", "dr_lee"])
    assert args.func(args) == 0
    args = _parser().parse_args(["annotators", "list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "dr_lee\tdisabled" in out and "a-good-password" not in out


def test_cli_serve_defaults_to_loopback() -> None:
    args = _parser().parse_args(["serve-labelling"])
    assert (args.host, args.port, args.budget_hours) == ("127.0.0.1", 8765, 5.0)
    assert allowed_hosts_for("127.0.0.1") == ("127.0.0.1", "localhost")
    assert allowed_hosts_for("10.0.0.5") == ("127.0.0.1", "localhost", "10.0.0.5")
    assert allowed_hosts_for("0.0.0.0") == ("*",)
