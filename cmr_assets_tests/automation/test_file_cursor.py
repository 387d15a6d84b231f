import os

from cmr_assets.automation.file_cursor import (
    files_after,
    format_cursor,
    parse_cursor,
    run_key_for,
    scan_folder,
)


def _touch(path, mtime_ns):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_cursor_resumes_after_restart_and_never_repeats(tmp_path):
    _touch(tmp_path / "a.jsonl", 1_000)
    _touch(tmp_path / "b.jsonl", 1_000)
    _touch(tmp_path / "c.jsonl.tmp", 1_500)
    first = files_after(scan_folder(tmp_path, ["*.jsonl"]), None)
    assert [s.path for s in first] == ["a.jsonl", "b.jsonl"]
    cursor = format_cursor(first[-1])

    # A restarted sensor only has the serialised cursor.
    assert files_after(scan_folder(tmp_path, ["*.jsonl"]), parse_cursor(cursor)) == []
    _touch(tmp_path / "sub" / "d.jsonl", 2_000)
    again = files_after(scan_folder(tmp_path, ["*.jsonl"]), parse_cursor(cursor))
    assert [s.path for s in again] == ["sub/d.jsonl"]
    assert run_key_for(again) != run_key_for(first)


def test_missing_folder_is_empty(tmp_path):
    assert scan_folder(tmp_path / "nope", ["*"]) == []
