import json

import pytest
import torch

from medot import __version__
from medot.checkpoint import Checkpoint, checkpoint_paths, list_checkpoints, load_checkpoint, save_checkpoint
from medot.errors import CheckpointError


def _checkpoint():
    tensors = {"prompts.high": torch.randn(3, 4, 8), "anchors": torch.arange(6.0).view(2, 3)}
    meta = {"method": "kmat", "backbone": "lite", "classes": ["a", "b", "c"], "hyper": {"lr": 0.0025}}
    return Checkpoint(tensors, meta)


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    original = _checkpoint()
    tensor_path = save_checkpoint(tmp_path / "run" / "model", original)
    assert tensor_path.name == "model.safetensors"
    loaded = load_checkpoint(tmp_path / "run" / "model.json")
    assert set(loaded.tensors) == set(original.tensors)
    for name, tensor in original.tensors.items():
        assert torch.equal(loaded.tensors[name], tensor)
    assert loaded.meta["classes"] == ["a", "b", "c"]
    assert loaded.meta["hyper"] == {"lr": 0.0025}
    assert loaded.meta["medot_version"] == __version__
    assert loaded.method == "kmat" and loaded.backbone == "lite"
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_paths_accept_any_of_the_three_spellings(tmp_path):
    expected = (tmp_path / "m.safetensors", tmp_path / "m.json")
    assert checkpoint_paths(tmp_path / "m") == expected
    assert checkpoint_paths(tmp_path / "m.json") == expected
    assert checkpoint_paths(tmp_path / "m.safetensors") == expected


def test_missing_required_metadata_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="method"):
        save_checkpoint(tmp_path / "m", Checkpoint({"x": torch.zeros(1)}, {"backbone": "lite"}))


def test_tensor_file_swapped_under_sidecar_is_detected(tmp_path):
    save_checkpoint(tmp_path / "a", _checkpoint())
    other = _checkpoint()
    other.tensors["anchors"] = other.tensors["anchors"] + 1
    save_checkpoint(tmp_path / "b", other)
    (tmp_path / "b.safetensors").replace(tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "a")


def test_corrupt_or_missing_files_give_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "nothing")
    save_checkpoint(tmp_path / "c", _checkpoint())
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "d.safetensors").write_bytes(b"garbage bytes, not safetensors")
    sha = __import__("hashlib").sha256(b"garbage bytes, not safetensors").hexdigest()
    (tmp_path / "d.json").write_text(json.dumps({"method": "x", "backbone": "lite", "tensors_sha256": sha}))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "d")


def test_list_checkpoints_finds_sidecars_and_filters_by_method(tmp_path):
    save_checkpoint(tmp_path / "a" / "kmat_model", _checkpoint())
    other = _checkpoint()
    other.meta["method"] = "pradot"
    save_checkpoint(tmp_path / "b" / "deep" / "pradot_model", other)
    (tmp_path / "b" / "unrelated.json").write_text('{"hello": 1}')
    (tmp_path / "orphan.json").write_text(json.dumps({"method": "kmat", "backbone": "lite"}))
    state = _checkpoint()
    state.meta["trainer"] = {"progress": {"epoch": 3}}
    save_checkpoint(tmp_path / "a" / "resume", state)
    everything = list_checkpoints(tmp_path, tmp_path / "does-not-exist")
    assert {path.name for path, _ in everything} == {"kmat_model.safetensors", "pradot_model.safetensors"}
    only = list_checkpoints(tmp_path, method="pradot")
    assert [meta["method"] for _, meta in only] == ["pradot"]



def _save(tmp_path, version, kill_at=0):
    """Save version ``version`` in a forked writer that is SIGKILLed right before its
    ``kill_at``-th filesystem step (rename or link; 0: never; "final": the sidecar's rename).
    Returns (exit signal, steps taken)."""
    import os
    import signal

    from medot import checkpoint as module

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer
        os.close(read)
        calls = []

        def deadly(real):
            def wrapper(*args, **kwargs):
                calls.append(real.__name__)
                final = kill_at == "final" and str(args[1]).endswith("resume.json")
                if len(calls) == kill_at or final:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kwargs)

            return wrapper

        module.os.replace, module.os.link = deadly(os.replace), deadly(os.link)
        tensors = {"weights": torch.full((64, 8), float(version)), "step": torch.tensor([version])}
        meta = {"method": "kmat", "backbone": "lite", "version": version}
        save_checkpoint(tmp_path / "run" / "resume", Checkpoint(tensors, meta))
        os.write(write, str(len(calls)).encode())
        os._exit(0)
    os.close(write)
    steps = os.read(read, 100).decode()
    os.close(read)
    _, status = os.waitpid(pid, 0)
    return (os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0), int(steps or 0)


def _version(checkpoint):
    version = checkpoint.meta["version"]
    assert int(checkpoint.tensors["step"]) == version
    assert torch.equal(checkpoint.tensors["weights"], torch.full((64, 8), float(version)))
    return version


def test_a_writer_killed_at_any_step_leaves_a_complete_state_to_resume_from(tmp_path):
    import signal

    resume = tmp_path / "run" / "resume"
    for version in (1, 2):
        assert _save(tmp_path, version) == (0, 2 if version == 1 else 6)
    _, steps = _save(tmp_path, 3)  # keep 2 as the previous version (2 links, 2 renames), then 2 renames
    for kill_at in range(1, steps + 1):
        for version in (1, 2):  # current = 2, previous = 1
            _save(tmp_path, version)
        assert _save(tmp_path, 3, kill_at=kill_at)[0] == signal.SIGKILL
        assert _version(load_checkpoint(resume, fallback=True)) == 2
        # killed again between the renames of the next save: the complete state is never overwritten
        assert _save(tmp_path, 4, kill_at="final")[0] == signal.SIGKILL
        assert _version(load_checkpoint(resume, fallback=True)) == 2
        assert _save(tmp_path, 5)[0] == 0
        assert _version(load_checkpoint(resume)) == 5
    # between the two final renames: the strict load refuses, the fallback serves the previous version
    _save(tmp_path, 6)
    assert _save(tmp_path, 7, kill_at="final")[0] == signal.SIGKILL
    with pytest.raises(CheckpointError, match="hash differs"):
        load_checkpoint(resume)
    assert _version(load_checkpoint(resume, fallback=True)) == 6
    assert [path for path, _ in list_checkpoints(tmp_path)] == [tmp_path / "run" / "resume.safetensors"]
