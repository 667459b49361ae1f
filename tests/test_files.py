"""robgen.files: a write that fails halfway leaves the old file whole and no partial file beside it; results.json
text is strict JSON."""

import pytest

from robgen.files import partial_path, write_atomically, write_text_atomically


def test_a_complete_write_replaces_the_file(tmp_path):
    path = tmp_path / "record.json"
    write_text_atomically(path, "old")
    assert write_text_atomically(path, "new") == path
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_two_writers_of_one_file_at_once_never_share_a_temporary_file(tmp_path):
    """Every writer wrote `<name>.partial`: two processes saving one checkpoint renamed or deleted each other's
    half-written file (FileNotFoundError), and a failing one removed the other's."""
    import threading

    path = tmp_path / "model.safetensors"
    assert partial_path(path) != partial_path(path) and partial_path(path).parent == tmp_path
    started, errors = threading.Barrier(2), []

    def writer(text):
        def write(temporary):
            temporary.write_text(text)
            started.wait()  # both temporaries exist before either is renamed
        try:
            write_atomically(path, write)
        except Exception as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(text,)) for text in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and path.read_text() in ("first", "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


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


def test_files_written_together_are_replaced_together_or_not_at_all(tmp_path):
    from robgen.files import write_together

    weights, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    write_together({weights: lambda t: t.write_text("w1"), config: lambda t: t.write_text("c1")})

    def full_disk(temporary):
        raise OSError("no space left on device")

    with pytest.raises(OSError):
        write_together({weights: lambda t: t.write_text("w2"), config: full_disk})
    assert (weights.read_text(), config.read_text()) == ("w1", "c1")  # neither replaced: they still match
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_results_json_text_is_strict_json_with_a_rate_over_no_images_as_null():
    import json
    import math

    from robgen.files import json_text

    record = {"rate": math.nan, "ci": (math.nan, math.nan), "rows": [{"n": 0, "mean": float("nan")}], "ok": 0.5,
              "score": -math.inf}

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    text = json_text(record)
    assert json.loads(text, parse_constant=refuse) == {"rate": None, "ci": [None, None],
                                                       "rows": [{"n": 0, "mean": None}], "ok": 0.5,
                                                       "score": None}
    assert text.endswith("}\n") and "NaN" not in text


def test_written_files_get_the_usual_permissions_not_safetensors_owner_only(tmp_path):
    """safetensors writes 0600: a checkpoint saved through robgen is readable as any file its user writes."""
    import os
    import torch
    from safetensors.torch import save_file
    from robgen.files import write_together
    umask = os.umask(0o022)
    os.umask(umask)
    weights, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    write_atomically(weights, lambda t: save_file({"w": torch.zeros(2)}, str(t)))
    assert os.stat(weights).st_mode & 0o777 == 0o666 & ~umask
    write_together({weights: lambda t: save_file({"w": torch.ones(2)}, str(t)), config: lambda t: t.write_text("{}")})
    assert os.stat(weights).st_mode & 0o777 == 0o666 & ~umask
    os.umask(0o077)  # a umask tightened after robgen was imported holds for what it writes next
    try:
        fresh = tmp_path / "fresh.safetensors"  # a new file (one rewritten keeps its mode, as with a plain open)
        write_atomically(fresh, lambda t: save_file({"w": torch.zeros(2)}, str(t)))
        assert os.stat(fresh).st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)


def test_the_new_content_is_on_the_disk_before_its_name_replaces_the_old_file(tmp_path, monkeypatch):
    """Without an fsync before the rename, a power cut soon after it could leave the name holding an empty file."""
    import os

    from robgen import files

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_text_atomically(tmp_path / "one.json", "{}")
    assert events == ["fsync", "replace"]
    events.clear()
    files.write_together({tmp_path / "a": lambda t: t.write_text("a"), tmp_path / "b": lambda t: t.write_text("b")})
    assert events == ["fsync", "fsync", "replace", "replace"]


def test_a_rewritten_file_keeps_its_permissions_and_a_new_one_gets_the_umasks(tmp_path):
    """A plain open(path, "w") keeps an existing file's mode; the atomic write gave a private (0600) checkpoint
    0644, readable by every user of the machine."""
    import os
    import stat

    kept, new = tmp_path / "private.json", tmp_path / "new.json"
    kept.write_text("old")
    os.chmod(kept, 0o600)
    write_text_atomically(kept, "new")
    assert kept.read_text() == "new" and stat.S_IMODE(os.stat(kept).st_mode) == 0o600
    previous = os.umask(0o027)
    try:
        write_text_atomically(new, "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(new).st_mode) == 0o640


def test_under_a_read_only_umask_a_file_is_written(tmp_path, monkeypatch):
    """Under umask 0222 the temporary file is read-only from its creation, and the flush opened it for writing:
    PermissionError for every user but root, so nothing could be saved. Root may open any file for writing, so
    the system's check for other users is played here by `open` refusing to write a file its owner may not."""
    import builtins
    import os
    import stat

    import robgen.files as files

    def open_as_a_user(path, mode="r", *args, **kwargs):
        if any(c in mode for c in "wa+") and os.path.exists(path) and not os.stat(path).st_mode & stat.S_IWUSR:
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", open_as_a_user, raising=False)
    path = tmp_path / "read-only.json"
    previous = os.umask(0o222)
    try:
        write_text_atomically(path, "{}")
    finally:
        os.umask(previous)
    assert path.read_text() == "{}" and stat.S_IMODE(os.stat(path).st_mode) == 0o444


def test_a_name_near_the_file_systems_limit_can_be_written(tmp_path):
    """The temporary name added 23 characters to the target's: a 244-character name (which open() takes) failed
    with 'File name too long'."""
    from robgen.files import write_together

    for name in ("a" * 240 + ".png", "é" * 120 + ".json"):  # 244 bytes; 245 bytes in UTF-8
        path = tmp_path / name
        write_text_atomically(path, "x")
        write_together({path: lambda t: t.write_text("y")})
        assert path.read_text() == "y"
        assert sorted(p.name for p in tmp_path.iterdir()) == [name]
        path.unlink()
