"""Trainer: reproducibility, lr schedule, exact resume, cancellation, early stopping, events, errors."""

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from medot.checkpoint import load_checkpoint
from medot.errors import CheckpointError, MedotError
from medot.train import (
    EpochContext,
    TensorBatches,
    TrainConfig,
    Trainer,
    TrainingTask,
    WarmupCosineSchedule,
)

ROWS, DIM, CLASSES, BATCH = 40, 6, 3, 8  # 5 steps per epoch
STEPS_PER_EPOCH = ROWS // BATCH


class TinyTask(TrainingTask):
    """A linear classifier behind dropout, on top of a frozen layer standing in for a backbone
    (the same in every instance). The head's initial weights come from ``init_seed``, not from the
    global RNG, so only the trainer's seed (data order, dropout) makes two runs differ."""

    def __init__(self, init_seed: int = 123, nan_at_call: int | None = None, fail_at_call: int | None = None):
        super().__init__()
        self.frozen = nn.Linear(DIM, DIM).requires_grad_(False)
        self.head = nn.Linear(DIM, CLASSES)
        with torch.no_grad():
            for module, seed in ((self.frozen, 0), (self.head, init_seed)):
                generator = torch.Generator().manual_seed(seed)
                for p in module.parameters():
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        self.dropout = nn.Dropout(0.3)
        self.calls = 0
        self.nan_at_call, self.fail_at_call = nan_at_call, fail_at_call

    def training_step(self, batch):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise RuntimeError("simulated crash")
        features, labels = batch
        ce = F.cross_entropy(self.head(self.dropout(self.frozen(features))), labels)
        if self.calls == self.nan_at_call:
            ce = ce * float("nan")
        l2 = 1e-3 * self.head.weight.pow(2).sum()
        return {"loss": ce + l2, "ce": ce, "l2": l2}

    def checkpoint_meta(self):
        return {"method": "tiny", "backbone": "none", "classes": ["a", "b", "c"]}


class ScriptedTask(TinyTask):
    """Validation scores read from a script, one per epoch."""

    def __init__(self, scores):
        super().__init__()
        self.scores = list(scores)

    def validation_score(self):
        return self.scores.pop(0)


def _batches():
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(ROWS, DIM, generator=generator)
    labels = torch.randint(0, CLASSES, (ROWS,), generator=generator)
    return TensorBatches(features, labels, batch_size=BATCH)


def _config(**changes):
    base = dict(epochs=4, lr=0.05, warmup_epochs=1, device="cpu", progress=False, event_every_steps=1)
    return TrainConfig(**{**base, **changes})


def _fit(task, config, **kwargs):
    return Trainer(config).fit(task, _batches(), **kwargs)


def _params(task):
    return {name: t.clone() for name, t in task.checkpoint_tensors().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_warmup_cosine_schedule_matches_hand_computation():
    constant = WarmupCosineSchedule(lr=0.002, total_steps=10, warmup_steps=2, warmup="constant", warmup_lr=1e-5)
    assert [constant(s) for s in (0, 1)] == [1e-5, 1e-5]
    assert constant(2) == pytest.approx(0.002)
    assert constant(4) == pytest.approx(0.001 * (1 + math.sqrt(0.5)))  # cos(pi * 2/8)
    assert constant(6) == pytest.approx(0.001)  # cos(pi / 2) = 0
    assert constant(10) == pytest.approx(0.0)
    linear = WarmupCosineSchedule(lr=0.002, total_steps=10, warmup_steps=4, warmup="linear", warmup_lr=0.0, min_lr=1e-4)
    assert [linear(s) for s in range(4)] == pytest.approx([0.0, 0.0005, 0.001, 0.0015])
    assert linear(7) == pytest.approx(1e-4 + 0.0019 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))


def test_trainer_steps_the_schedule_per_optimiser_step():
    events = []
    _fit(TinyTask(), _config(epochs=3, warmup="linear", warmup_lr=0.01), on_event=events.append)
    used = [e.metrics["lr"] for e in events if e.kind == "step"]
    schedule = WarmupCosineSchedule(0.05, 3 * STEPS_PER_EPOCH, STEPS_PER_EPOCH, "linear", warmup_lr=0.01)
    assert used == pytest.approx([schedule(s) for s in range(3 * STEPS_PER_EPOCH)])
    assert used[:3] == pytest.approx([0.01, 0.018, 0.026])


def test_same_seed_reproduces_and_other_seed_differs():
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        task = TinyTask()
        _fit(task, _config(seed=seed))
        runs[name] = _params(task)
    _assert_same(runs["a"], runs["b"])
    assert not torch.equal(runs["a"]["head.weight"], runs["c"]["head.weight"])
    assert "frozen.weight" not in runs["a"]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, optimizer):
    uninterrupted = TinyTask()
    _fit(uninterrupted, _config(optimizer=optimizer, checkpoint_dir=tmp_path / "a"))

    crashing = TinyTask(fail_at_call=2 * STEPS_PER_EPOCH + 3)  # mid epoch 3, after the epoch-2 checkpoint
    events = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(crashing, _config(optimizer=optimizer, checkpoint_dir=tmp_path / "b"), on_event=events.append)
    assert events[-1].kind == "error" and events[-1].message == "simulated crash"

    resumed = TinyTask(init_seed=999)  # other weights: everything must come from the checkpoint
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint's state must replace it
    result = _fit(resumed, _config(optimizer=optimizer, checkpoint_dir=tmp_path / "b"), resume=True)
    assert resumed.calls == 2 * STEPS_PER_EPOCH
    assert result.status == "completed" and result.epochs_completed == 4 and result.global_step == 20
    _assert_same(_params(resumed), _params(uninterrupted))
    saved = load_checkpoint(result.model_path)
    _assert_same(saved.tensors, _params(uninterrupted))
    assert saved.meta["training"]["status"] == "completed" and len(saved.meta["training"]["history"]) == 4


def test_resume_falls_back_to_the_previous_state_when_the_last_save_was_cut_between_renames(tmp_path):
    uninterrupted = TinyTask()
    _fit(uninterrupted, _config(checkpoint_dir=tmp_path / "a"))

    crashing = TinyTask(fail_at_call=2 * STEPS_PER_EPOCH + 3)  # after the epoch-1 and epoch-2 saves
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(crashing, _config(checkpoint_dir=tmp_path / "b"))
    # a kill between the epoch-2 save's two renames: new tensors beside the old (epoch-1) sidecar
    current, sidecar = tmp_path / "b" / "resume.safetensors", tmp_path / "b" / "resume.json"
    previous_sidecar = tmp_path / "b" / ".resume.previous.json"
    assert json.loads(previous_sidecar.read_text())["trainer"]["progress"]["epoch"] == 1
    sidecar.write_text(previous_sidecar.read_text())
    with pytest.raises(CheckpointError, match="hash differs"):
        load_checkpoint(current)

    resumed, events = TinyTask(init_seed=999), []
    result = _fit(resumed, _config(checkpoint_dir=tmp_path / "b"), resume=True, on_event=events.append)
    assert "from the previous saved state" in events[0].message
    assert resumed.calls == 3 * STEPS_PER_EPOCH  # epochs 2-4 again, from the epoch-1 state
    assert result.status == "completed" and result.epochs_completed == 4
    _assert_same(_params(resumed), _params(uninterrupted))


def test_cancellation_mid_epoch_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    uninterrupted = TinyTask()
    _fit(uninterrupted, _config())

    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) == STEPS_PER_EPOCH + 3  # before step 3 of epoch 2

    cancelled_task, events = TinyTask(), []
    config = _config(checkpoint_dir=tmp_path)
    result = _fit(cancelled_task, config, on_event=events.append, should_stop=should_stop)
    assert result.status == "cancelled" and result.model_path is None
    assert result.global_step == STEPS_PER_EPOCH + 2
    assert [e.kind for e in events[-2:]] == ["checkpoint", "cancelled"]
    assert events[-1].epoch == 2 and "resume=True" in events[-1].message

    resumed = TinyTask(init_seed=7)
    result = _fit(resumed, config, resume=True)
    assert result.status == "completed" and resumed.calls == 4 * STEPS_PER_EPOCH - (STEPS_PER_EPOCH + 2)
    _assert_same(_params(resumed), _params(uninterrupted))
    assert [record["epoch"] for record in result.history] == [1, 2, 3, 4]


def test_resume_with_other_settings_is_refused(tmp_path):
    _fit(TinyTask(), _config(epochs=2, checkpoint_dir=tmp_path))
    with pytest.raises(CheckpointError, match=r"lr: 0\.05 -> 0\.1"):
        _fit(TinyTask(), _config(epochs=2, lr=0.1, checkpoint_dir=tmp_path), resume=True)


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    task = ScriptedTask([0.1, 0.5, 0.4, 0.45, 0.9, 0.9])
    snapshots, events = {}, []

    def on_event(event):
        events.append(event)
        if event.kind == "epoch":
            snapshots[event.epoch] = _params(task)

    result = _fit(task, _config(epochs=6, patience=2, checkpoint_dir=tmp_path), on_event=on_event)
    assert result.status == "early_stopped"
    assert (result.epochs_completed, result.best_epoch, result.best_score) == (4, 2, 0.5)
    assert [record["val_score"] for record in result.history] == [0.1, 0.5, 0.4, 0.45]
    assert not torch.equal(snapshots[2]["head.weight"], snapshots[4]["head.weight"])
    _assert_same(_params(task), snapshots[2])
    _assert_same(load_checkpoint(result.model_path).tensors, snapshots[2])
    early = [e for e in events if e.kind == "early_stop"]
    assert len(early) == 1 and early[0].metrics["best_epoch"] == 2

    # resuming a finished run trains nothing and returns the same kept state
    again = ScriptedTask([])
    again_result = _fit(again, _config(epochs=6, patience=2, checkpoint_dir=tmp_path), resume=True)
    assert again.calls == 0 and again_result.status == "early_stopped" and again_result.best_epoch == 2
    _assert_same(_params(again), snapshots[2])


def test_events_are_ordered_and_step_events_throttled(tmp_path):
    events = []
    _fit(TinyTask(), _config(epochs=2, event_every_steps=3, checkpoint_dir=tmp_path), on_event=events.append)
    assert [e.kind for e in events] == [
        "start", "step", "epoch", "checkpoint", "step", "step", "epoch", "checkpoint", "checkpoint", "done",
    ]  # fmt: skip
    steps = [e for e in events if e.kind == "step"]
    assert [(e.step, e.epoch) for e in steps] == [(3, 1), (6, 2), (9, 2)]
    assert steps[-1].metrics["progress"] == pytest.approx(0.9)
    assert set(steps[0].metrics) == {"loss", "ce", "l2", "lr", "progress"}
    epoch = events[2]
    assert (epoch.epoch, epoch.step, epoch.total_epochs) == (1, 5, 2)
    assert epoch.metrics["loss"] == pytest.approx(epoch.metrics["ce"] + epoch.metrics["l2"])


def test_non_finite_loss_raises_a_plain_error_and_saves_nothing_corrupt(tmp_path):
    task, events = TinyTask(nan_at_call=STEPS_PER_EPOCH + 2), []
    with pytest.raises(MedotError, match=r"epoch 2/4, step 2/5: non-finite loss terms \(loss=nan, ce=nan, l2="):
        _fit(task, _config(checkpoint_dir=tmp_path), on_event=events.append)
    assert events[-1].kind == "error" and "Lower the learning rate" in events[-1].message
    assert all(torch.isfinite(t).all() for t in task.checkpoint_tensors().values())
    saved = load_checkpoint(tmp_path / "resume")
    assert saved.meta["trainer"]["progress"]["global_step"] == STEPS_PER_EPOCH
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "model.json").exists()


def test_amp_is_a_no_op_on_cpu():
    plain, mixed = TinyTask(), TinyTask()
    _fit(plain, _config(amp=False))
    _fit(mixed, _config(amp=True))
    _assert_same(_params(plain), _params(mixed))


def test_progress_bar_shows_loss_terms_and_can_be_disabled(capsys):
    _fit(TinyTask(), _config(epochs=2, progress=True))
    shown = capsys.readouterr().err
    assert "epoch 2/2" in shown and "ce=" in shown and "lr=" in shown
    _fit(TinyTask(), _config(epochs=2, progress=False))
    assert capsys.readouterr().err == ""


def test_tensor_batches_shard_ranks_evenly_and_cover_every_row():
    rows = torch.arange(10)
    source = TensorBatches(rows, batch_size=2)
    shards = []
    for rank in range(3):
        epoch = source(EpochContext(0, torch.Generator().manual_seed(1), rank=rank, world_size=3))
        shards.append(torch.cat([batch[0] for batch in epoch]))
        assert len(epoch) == 2
    assert [len(shard) for shard in shards] == [4, 4, 4]
    assert set(torch.cat(shards).tolist()) == set(range(10))
    again = source(EpochContext(0, torch.Generator().manual_seed(1), rank=1, world_size=3))
    assert torch.equal(torch.cat([batch[0] for batch in again]), shards[1])


def test_single_process_group_trains_through_ddp_like_a_plain_run(tmp_path):
    plain = TinyTask()
    _fit(plain, _config(epochs=2))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = TinyTask()
        _fit(wrapped, _config(epochs=2))
    finally:
        dist.destroy_process_group()
    _assert_same(_params(wrapped), _params(plain))
