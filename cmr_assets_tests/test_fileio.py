import stat

from cmr_assets.fileio import write_atomically


def test_write_atomically_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "roster.json"
    write_atomically(target, b"old", mode=0o600)
    assert write_atomically(target, b"new", mode=0o600) == target
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_atomically(tmp_path / "image.png", b"x", durable=False)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["image.png", "roster.json"]
