"""libcni_py.records: the atomic JSON records every part of the suite keeps its state in."""
import os
import subprocess
import sys

import pytest

from libcni_py import records


def test_write_read_replace(tmp_path):
    path = str(tmp_path / "r.json")
    records.write(path, {"a": 1})
    assert records.read(path) == {"a": 1}
    records.write(path, {"a": 2})
    assert records.read(path) == {"a": 2}
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert records.names(str(tmp_path)) == ["r.json"]
    assert records.remove(path) and not records.remove(path)
    assert records.read_or(path, "none") == "none"


def test_a_planted_symlink_at_the_temp_name_is_never_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = str(tmp_path / "r.json")
    os.symlink(victim, f"{path}{records.TMP_MARK}{os.getpid()}")
    records.write(path, {"a": 1})
    assert victim.read_text() == "precious"
    assert records.read(path) == {"a": 1} and not os.path.islink(path)


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f"r.json{records.TMP_MARK}{dead}"
    stale.write_text("{half")
    live = tmp_path / f"other.json{records.TMP_MARK}1"      # pid 1 lives: its writer may be busy
    live.write_text("{")
    records.write(str(tmp_path / "r.json"), {})
    assert not stale.exists() and live.exists()
    assert records.names(str(tmp_path)) == ["r.json"]       # temp files are not records


@pytest.mark.parametrize("content", ["{\"mtu\": 1e999}", "[" * 50000 + "]" * 50000, "NaN", "{\"a\": Infinity}",
                                     "\xff\xfe", "{", ""])
def test_bad_content_is_a_record_error(tmp_path, content):
    path = tmp_path / "r.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(records.RecordError):
        records.read(str(path))


def test_non_regular_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(records.RecordError):
        records.read(str(fifo))          # O_NONBLOCK: a FIFO without writer never blocks
    link = tmp_path / "link"
    os.symlink(tmp_path / "target", link)
    (tmp_path / "target").write_text("{}")
    with pytest.raises(records.RecordError):
        records.read(str(link))
    with pytest.raises(records.RecordError):
        records.read(str(tmp_path))


def test_size_bound(tmp_path):
    path = tmp_path / "big"
    path.write_text("[" + "1," * 1000 + "1]")
    with pytest.raises(records.RecordError):
        records.read(str(path), max_bytes=100)


def test_a_directory_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(records.RecordError):
        records.write(str(shared / "r.json"), {})
    os.chown(shared, 0, 12345)
    shared.chmod(0o775)
    with pytest.raises(records.RecordError):
        records.write(str(shared / "r.json"), {})
    shared.chmod(0o1777)                  # sticky, as /tmp: what we make there nobody else can replace
    records.write(str(shared / "r.json"), {"a": 1})
    shared.chmod(0o755)
    records.write(str(shared / "r.json"), {"a": 2})
    assert records.read(str(shared / "r.json")) == {"a": 2}
