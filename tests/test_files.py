"""robgen.files: a write that fails halfway leaves the old file whole and no partial file beside it."""

import pytest

from robgen.files import partial_path, write_atomically, write_text_atomically


def test_a_complete_write_replaces_the_file(tmp_path):
    path = tmp_path / "record.json"
    write_text_atomically(path, "old")
    assert write_text_atomically(path, "new") == path
    assert path.read_text() == "new" and not partial_path(path).exists()


def test_a_write_that_dies_halfway_keeps_the_old_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "weights.bin"
    write_text_atomically(path, "complete old content")

    def dies_halfway(temporary):
        temporary.write_text("half of the new")
        raise KeyboardInterrupt  # a run killed mid-write

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, dies_halfway)
    assert path.read_text() == "complete old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]
