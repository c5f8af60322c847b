"""Checkpoints go through Detectron2's PathManager when OUTPUT_DIR is not a local folder.

A PathHandler for a made-up "memtest://" prefix keeps files in a dict, as a remote store
would: nothing under that prefix exists on the local filesystem, so any write that bypasses
PathManager (os calls, tempfile in the folder) fails.
"""

import io
import os

import pytest
import torch
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

from ms_rcnn.checkpoint import MSRCNNCheckpointer

PREFIX = "memtest://"


class _Upload(io.BytesIO):
    """A file being written to the store: the object appears (whole) only when closed."""

    def __init__(self, store, key):
        super().__init__()
        self._store, self._key = store, key

    def close(self):
        if not self.closed:
            self._store[self._key] = self.getvalue()
        super().close()


class MemoryPathHandler(PathHandler):
    def __init__(self, cache_dir):
        super().__init__()
        self.store = {}
        self.opened_for_writing = []
        self.cache_dir = cache_dir

    def _get_supported_prefixes(self):
        return [PREFIX]

    def _key(self, path):
        return path[len(PREFIX) :]

    def _open(self, path, mode="r", **kwargs):
        key = self._key(path)
        if "w" in mode:
            self.opened_for_writing.append(key)
            upload = _Upload(self.store, key)
            return upload if "b" in mode else io.TextIOWrapper(upload)
        if key not in self.store:
            raise FileNotFoundError(path)
        data = io.BytesIO(self.store[key])
        return data if "b" in mode else io.TextIOWrapper(data)

    def _exists(self, path, **kwargs):
        key = self._key(path).rstrip("/")
        return key in self.store or any(k.startswith(key + "/") for k in self.store)

    def _isfile(self, path, **kwargs):
        return self._key(path) in self.store

    def _ls(self, path, **kwargs):
        folder = self._key(path).rstrip("/") + "/"
        return sorted(k[len(folder) :] for k in self.store if k.startswith(folder))

    def _get_local_path(self, path, **kwargs):
        # As remote handlers do for reading: a local copy of the object.
        local = os.path.join(self.cache_dir, self._key(path).replace("/", "_"))
        with open(local, "wb") as f:
            f.write(self.store[self._key(path)])
        return local


@pytest.fixture
def memory_store(tmp_path, monkeypatch):
    # Register on a copy of PathManager's handler table, so the prefix is gone after the test.
    monkeypatch.setattr(PathManager, "_path_handlers", dict(PathManager._path_handlers))
    handler = MemoryPathHandler(str(tmp_path))
    PathManager.register_handler(handler)
    return handler


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def test_checkpoint_and_tag_are_written_through_pathmanager(memory_store):
    model = _model(0)
    MSRCNNCheckpointer(model, PREFIX + "run").save("model_0000009", iteration=9)
    assert sorted(memory_store.store) == ["run/last_checkpoint", "run/model_0000009.pth"]
    assert memory_store.store["run/last_checkpoint"] == b"model_0000009.pth"
    saved = torch.load(io.BytesIO(memory_store.store["run/model_0000009.pth"]), weights_only=False)
    assert saved["iteration"] == 9
    assert all(torch.equal(saved["model"][k], v) for k, v in model.state_dict().items())

    # Resuming reads them back through the same handler.
    other = _model(1)
    ckpt = MSRCNNCheckpointer(other, PREFIX + "run")
    assert ckpt.has_checkpoint()
    assert ckpt.resume_or_load("", resume=True)["iteration"] == 9
    assert torch.equal(other.weight, model.weight)


def test_failed_save_leaves_the_stored_checkpoint_untouched(memory_store, monkeypatch):
    """A serialization failure happens before the store is opened: the old object and tag stay,
    and nothing half-written is uploaded."""
    model = _model(0)
    ckpt = MSRCNNCheckpointer(model, PREFIX + "run")
    ckpt.save("model_final")
    before = dict(memory_store.store)
    memory_store.opened_for_writing.clear()

    def half_then_die(obj, f):
        f.write(b"\x80" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_final")
    assert memory_store.store == before
    assert memory_store.opened_for_writing == []


def test_local_paths_still_use_an_atomic_rename(tmp_path, memory_store, monkeypatch):
    """Registering another prefix does not change how local folders are written."""
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append(b), real_replace(a, b)))
    MSRCNNCheckpointer(_model(0), str(tmp_path)).save("model_final")
    assert renames == [str(tmp_path / "model_final.pth"), str(tmp_path / "last_checkpoint")]
    assert memory_store.store == {}
