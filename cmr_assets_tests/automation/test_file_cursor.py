import os
import shutil

from cmr_assets.automation.file_cursor import folder_state, format_cursor, new_file_count, parse_cursor, scan_folder


def _touch(path, mtime_ns, text="{}\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_same_listing_same_state_and_round_trip(tmp_path):
    _touch(tmp_path / "a.jsonl", 1_000)
    _touch(tmp_path / "b.jsonl.tmp", 1_500)
    state = folder_state(scan_folder(tmp_path, ["*.jsonl"]))
    assert state.n_files == 1
    assert parse_cursor(format_cursor(state)) == state
    assert folder_state(scan_folder(tmp_path, ["*.jsonl"])) == state


def test_files_with_old_mtimes_or_early_names_are_not_missed(tmp_path):
    _touch(tmp_path / "m.jsonl", 2_000)
    before = folder_state(scan_folder(tmp_path, ["*.jsonl"]))
    old = _touch(tmp_path / "elsewhere" / "a.jsonl", 1_000)  # copied in with its old mtime, sorts first
    shutil.move(old, tmp_path / "a.jsonl")
    shutil.rmtree(tmp_path / "elsewhere")
    after = folder_state(scan_folder(tmp_path, ["*.jsonl"]))
    assert after.digest != before.digest and new_file_count(after, before) == 1
    _touch(tmp_path / "sub" / "z.jsonl", 2_000)  # nested, same mtime as the newest seen
    assert folder_state(scan_folder(tmp_path, ["*.jsonl"])).digest != after.digest


def test_missing_folder_is_empty(tmp_path):
    assert scan_folder(tmp_path / "nope", ["*"]) == []
