"""The Train tab's form and job views, called in-process as Gradio calls them."""

from types import SimpleNamespace

from app.train import FIELD_ARGUMENTS, backbone_choices, job_phase, shown_fields
from medot.backbones import available_backbones
from medot.jobs import JobManager
from medot.train.events import TrainEvent


def test_the_form_shows_only_the_fields_of_the_chosen_method(tmp_path):
    manager = JobManager(tmp_path / "home", tmp_path / "data")
    shown = lambda method: {field: update["visible"] for field, update in zip(FIELD_ARGUMENTS, shown_fields(manager, method))}  # noqa: E731
    kmat, pradot = shown("kmat"), shown("pradot")
    assert {field for field, visible in kmat.items() if visible} == {"shots", "lambda_anc", "lambda_fgw", "variant",
                                                                     "backbone"}
    assert {field for field, visible in pradot.items() if visible} == {"n_prototypes", "backbone"}
    variant = dict(zip(FIELD_ARGUMENTS, shown_fields(manager, "kmat")))["variant"]
    assert variant["choices"][0] == "kmat" and {"coop", "cocoop", "kgcoop", "biomedcoop"} <= set(variant["choices"])
    if "optiml" in manager.methods:  # pretrains its own encoder: its own variants, no backbone
        fields = dict(zip(FIELD_ARGUMENTS, shown_fields(manager, "optiml")))
        assert fields["variant"]["choices"] == ["optiml", "vicreg", "vicregl"] and not fields["backbone"]["visible"]


def test_only_available_backbones_are_offered(tmp_path):
    manager = JobManager(tmp_path / "home", tmp_path / "data")
    available = {s.name for s in available_backbones() if s.available}
    unavailable = {s.name for s in available_backbones() if not s.available}
    offered = backbone_choices(manager)
    assert offered[0] == "auto" and set(offered[1:]) == available & {"lite", "biomedclip"}
    assert not unavailable & set(offered)


def test_a_running_job_whose_training_ended_is_evaluating():
    def manager(*kinds):
        return SimpleNamespace(progress=lambda job_id: [TrainEvent(kind, 3, 30, 3) for kind in kinds])

    running = SimpleNamespace(id=1, status="running")
    assert job_phase(manager("start", "epoch", "done"), running) == "evaluating"
    assert job_phase(manager("start", "early_stop"), running) == "evaluating"
    assert job_phase(manager("start", "epoch"), running) == "running"
    assert job_phase(manager("done"), SimpleNamespace(id=1, status="done")) == "done"


# --------------------------------------------------------------------------- variant options (CLI parity)
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from app.train import VARIANT_FIELDS, job_detail, submit_job, variant_fields  # noqa: E402
from medot.cli import build_parser  # noqa: E402
from medot.jobs import JobError  # noqa: E402
from medot.jobs.runner import medot_train_command  # noqa: E402

CLASSES = ("nodule", "normal", "opacity")  # assets/descriptions/synthetic.json's classes


def _recording_manager(home, data_root, commands):
    """A manager whose jobs record the `medot train` command they would run and exit at once."""
    def command_for(method, arguments, out_dir, resume):
        commands.append(medot_train_command(method, arguments, out_dir, resume))
        return [sys.executable, "-c", "pass"]

    data_root.mkdir(parents=True, exist_ok=True)
    return JobManager(home, data_root, command_for=command_for)


def _launch(manager, method, variant, commands, dataset="synthetic", **options):
    submit_job(manager, method, dataset, "", 4, 1, 0, 1.0, 1.0, "auto", variant=variant, owner="session:a",
               options=options)
    deadline = __import__("time").monotonic() + 30
    while not commands and __import__("time").monotonic() < deadline:
        manager.refresh()
        __import__("time").sleep(0.05)
    return commands.pop()


def _folder_task(root: Path) -> Path:
    """ROOT/ct/{train,val,test}/<class>/ + ROOT/xray/test/<class>/, one tiny image each."""
    for split in ("ct/train", "ct/val", "ct/test", "xray/test"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 100, np.uint8)).save(root / split / name / "a.png")
    return root


def _error(call) -> str:
    with pytest.raises(gr.Error) as caught:
        call()
    return str(caught.value)


def test_variant_options_are_shown_only_for_their_method_and_variant(tmp_path):
    manager = JobManager(tmp_path / "home", tmp_path / "data")
    shown = lambda method, variant=None: {f for f, u in zip(VARIANT_FIELDS, variant_fields(manager, method, variant))  # noqa: E731
                                          if u["visible"]}
    assert shown("kmat") == shown("kmat", "kmat") == {"descriptions"}
    assert shown("kmat", "kgcoop") == {"kgcoop_lambda"} and shown("kmat", "coop") == set()
    assert shown("kmat", "biomedcoop") == {"descriptions", "biomedcoop_lambda1", "biomedcoop_lambda2", "biomedcoop_tau"}
    assert shown("kmat", "cocoop") == {"cocoop_width"}
    assert shown("pradot") == set()
    if "optiml" in manager.methods:
        assert shown("optiml") == shown("optiml", "optiml") == {"stages"}
        assert shown("optiml", "vicregl") == {"stages", "vicregl_alpha", "num_matches"}
        assert shown("optiml", "vicreg") == set()


@pytest.mark.skipif("optiml" not in JobManager.__init__.__kwdefaults__["methods"], reason="no optiml jobs")
def test_optiml_options_reach_the_command_exactly_when_set_and_bad_values_are_refused(tmp_path):
    commands: list = []
    manager = _recording_manager(tmp_path / "home", tmp_path / "data", commands)
    plain = _launch(manager, "optiml", "vicregl", commands, stages="", vicregl_alpha=None, num_matches=" ")
    assert not {"--stages", "--num-matches"} & set(plain) and not any(a.startswith("--vicregl-alpha") for a in plain)
    command = _launch(manager, "optiml", "vicregl", commands, stages="3 4", vicregl_alpha=0.5, num_matches="10, 2")
    i, j = command.index("--stages"), command.index("--num-matches")
    assert command[i + 1:i + 3] == ["3", "4"] and command[j + 1:j + 3] == ["10", "2"]
    assert "--vicregl-alpha=0.5" in command and "--method=vicregl" in command
    parsed = build_parser().parse_args(command[3:])  # what `medot train optiml` reads from it
    assert parsed.stages == [3, 4] and parsed.num_matches == [10, 2] and parsed.vicregl_alpha == 0.5
    # an option of another variant is left out: optiml takes stages, not VICRegL's weights
    command = _launch(manager, "optiml", "optiml", commands, stages="2 3 4", vicregl_alpha=0.5, num_matches="10 2")
    assert "--stages" in command and "--num-matches" not in command
    assert not any(a.startswith("--vicregl-alpha") for a in command)
    job = manager.list_jobs()[0]
    assert "--stages 2 3 4" in job_detail(manager, job.id, "session:a")[0]  # shown in the job's details
    queued = len(manager.list_jobs())
    for options, expected in [({"stages": "3"}, "must include 4"), ({"stages": "5 4"}, "at most 4"),
                              ({"stages": "three"}, "must be a number"), ({"vicregl_alpha": 1.5}, "at most 1"),
                              ({"num_matches": "20"}, "takes 2 numbers"), ({"num_matches": "0 4"}, "at least 1")]:
        variant = "vicregl" if "stages" not in options else "optiml"
        message = _error(lambda: _launch(manager, "optiml", variant, [], **options))
        assert expected in message and "\n" not in message, (options, message)
    assert len(manager.list_jobs()) == queued  # nothing was queued
    with pytest.raises(JobError, match="vicreg has no dense terms"):  # a direct (API) submission too
        manager.submit("optiml", {"dataset": "synthetic", "method": "vicreg", "stages": [3, 4]})


def test_kmat_options_reach_the_command_and_descriptions_stay_under_the_data_root(tmp_path):
    commands: list = []
    root = tmp_path / "data"
    manager = _recording_manager(tmp_path / "home", root, commands)
    task = _folder_task(root / "pair")
    shutil.copy(Path(__file__).parents[1] / "assets" / "descriptions" / "synthetic.json", root / "pair.json")
    command = _launch(manager, "kmat", "kmat", commands, dataset="pair", descriptions="pair.json", kgcoop_lambda=3.0)
    assert f"--descriptions={(root / 'pair.json').resolve()}" in command
    assert not any(a.startswith("--kgcoop-lambda") for a in command)  # KgCoOp's weight: not kmat's
    command = _launch(manager, "kmat", "kgcoop", commands, kgcoop_lambda=3.0, descriptions="")
    assert "--kgcoop-lambda=3.0" in command and not any(a.startswith("--descriptions") for a in command)
    assert build_parser().parse_args(command[3:]).kgcoop_lambda == 3.0
    command = _launch(manager, "kmat", "biomedcoop", commands, dataset="pair", descriptions="pair.json",
                      biomedcoop_lambda1=2.0, biomedcoop_tau=1.0)
    assert {"--biomedcoop-lambda1=2.0", "--biomedcoop-tau=1.0"} <= set(command)
    assert not any(a.startswith("--biomedcoop-lambda2") for a in command)
    detail = job_detail(manager, manager.list_jobs()[0].id, "session:a")[0]
    assert "--descriptions pair.json" in detail and str(root) not in detail
    queued = len(manager.list_jobs())
    outside = tmp_path / "outside.json"
    shutil.copy(root / "pair.json", outside)
    for path in (str(outside), "../outside.json"):
        message = _error(lambda: _launch(manager, "kmat", "kmat", [], dataset="pair", descriptions=path))
        assert "outside the data root" in message and "\n" not in message, message
    assert "at least 1" in _error(lambda: _launch(manager, "kmat", "cocoop", [], cocoop_width=0))
    assert "must be at least 0" in _error(lambda: _launch(manager, "kmat", "kgcoop", [], kgcoop_lambda=-1))
    assert len(manager.list_jobs()) == queued
    assert task.is_dir()


# --------------------------------------------------------------------------- loss curve axis
@pytest.mark.parametrize("steps", [[0], [1], [0, 1], [0, 1, 2], [0, 7], [3, 40], [0, 12_345]])
def test_the_loss_curve_has_ticks_on_whole_steps_only(steps):
    """A one- or two-point loss curve had ticks 0.2, 0.4, ... (Plotly's automatic ticks): every tick
    of the step axis is a whole number, at most 8 of them, every point inside the axis range."""
    from app.train import loss_curve

    events = [TrainEvent("step", 1, step, 1, {"loss": 1.0 / (1 + step)}) for step in steps]
    axis = loss_curve(SimpleNamespace(id=7), events).layout.xaxis
    low, high = axis.range
    assert low < min(steps) and max(steps) < high and axis.tickmode == "linear" and axis.tickformat == "d"
    assert float(axis.dtick).is_integer() and axis.dtick >= 1 and float(axis.tick0).is_integer()
    ticks = [axis.tick0 + k * axis.dtick for k in range(-100, 100_000) if low <= axis.tick0 + k * axis.dtick <= high]
    assert 1 <= len(ticks) <= 8 and all(float(t).is_integer() and t >= 0 for t in ticks), ticks


# --------------------------------------------------------------------------- the launch line follows its job
def test_the_launch_line_shows_the_jobs_state_once_it_leaves_the_queue(tmp_path):
    """"Job N (...) queued." stayed under the Launch button after the job had ended: the line the
    Train tab's timer shows becomes the job's state (running, then finished / failed / cancelled)."""
    import time

    from app.train import launch_line
    from medot.jobs.protocol import MODEL_FILE

    root = tmp_path / "data"
    root.mkdir()
    scripts = {"1": "import time; time.sleep(60)", "2": "raise SystemExit(3)"}  # by job id

    def command_for(method, arguments, out_dir, resume):
        model = out_dir / MODEL_FILE
        return [sys.executable, "-c", scripts.get(out_dir.name, "pass").replace("MODEL", repr(str(model)))]

    manager = JobManager(tmp_path / "home", root, command_for=command_for, max_parallel=1, cancel_grace_s=5)

    def settled(job_id, statuses):
        deadline = time.monotonic() + 30
        while manager.get(job_id).status not in statuses and time.monotonic() < deadline:
            time.sleep(0.05)
        return manager.get(job_id).status

    first = submit_job(manager, "pradot", "synthetic", "", 4, 1, 0, 1.0, 1.0, "auto", owner="session:a")
    second = submit_job(manager, "pradot", "synthetic", "", 4, 1, 0, 1.0, 1.0, "auto", owner="session:a")
    assert (first, second) == ("Job 1 (pradot) queued.", "Job 2 (pradot) queued.")
    assert settled(1, ("running",)) == "running"
    assert launch_line(manager, first, "session:a") == "Job 1 (pradot) is running."
    assert launch_line(manager, second, "session:a") == second  # still waiting for the one slot
    assert launch_line(manager, first, "session:b") == first  # another's job: nothing said about it
    manager.cancel(1, owner="session:a")
    assert settled(1, ("cancelled",)) == "cancelled"
    assert launch_line(manager, "Job 1 is cancelled.", "session:a") == "Job 1 (pradot) was cancelled."
    assert settled(2, ("failed",)) == "failed"
    failed = launch_line(manager, second, "session:a")
    assert failed.startswith("Job 2 (pradot) failed: ") and "queued" not in failed and "\n" not in failed
    scripts["3"] = "pass"  # exits 0 without writing a model: failed, saying so
    third = submit_job(manager, "pradot", "synthetic", "", 4, 1, 0, 1.0, 1.0, "auto", owner="session:a")
    assert settled(3, ("failed", "done")) == "failed"
    assert "without writing its model" in launch_line(manager, third, "session:a")
    scripts["4"] = "open(MODEL, 'w').close()"
    fourth = submit_job(manager, "pradot", "synthetic", "", 4, 1, 0, 1.0, 1.0, "auto", owner="session:a")
    assert settled(4, ("failed", "done")) == "done"
    assert launch_line(manager, fourth, "session:a") == "Job 4 (pradot) finished; its result card is on the right."
    assert launch_line(manager, "Cancelling job 3: asking it to stop", "session:a").startswith("Cancelling")


# --------------------------------------------------------------------------- MADPOT: abnormal shots for MVTec AD data
def _mvtec(root: Path) -> Path:
    """ROOT/cat/{train/good, test/good, test/crack, ground_truth/crack}, tiny images."""
    for folder in ("cat/train/good", "cat/test/good", "cat/test/crack", "cat/ground_truth/crack"):
        (root / folder).mkdir(parents=True)
        for i in range(3):
            name = f"{i:03d}_mask.png" if folder.endswith("ground_truth/crack") else f"{i:03d}.png"
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / folder / name)
    return root


def test_madpot_abnormal_shots_reach_the_command_and_stay_under_the_data_root(tmp_path):
    """`medot train madpot --abnormal-shots DIR` (MVTec AD data: normal-only training) from the Train
    tab: shown for MADPOT only, confined to the data root, checked before queuing, passed to the job."""
    commands: list = []
    root = tmp_path / "data"
    manager = _recording_manager(tmp_path / "home", root, commands)
    shown = {f for f, u in zip(FIELD_ARGUMENTS, shown_fields(manager, "madpot")) if u["visible"]}
    assert "abnormal_shots" in shown and "object" in shown
    assert not any(dict(zip(FIELD_ARGUMENTS, shown_fields(manager, m)))["abnormal_shots"]["visible"]
                   for m in manager.methods if m != "madpot")
    _mvtec(root / "mvtec")
    (root / "defects").mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 200, np.uint8)).save(root / "defects" / f"d{i}.png")

    def launch(dataset, folder, shots=2, method="madpot"):
        submit_job(manager, method, dataset, "", shots, 1, 0, 1.0, 1.0, "auto", owner="session:a",
                   abnormal_shots=folder)
        deadline = __import__("time").monotonic() + 30
        while not commands and __import__("time").monotonic() < deadline:
            manager.refresh()
            __import__("time").sleep(0.05)
        return commands.pop()

    command = launch("mvtec", " defects ")
    assert f"--abnormal-shots={(root / 'defects').resolve()}" in command
    parsed = build_parser().parse_args(command[3:])  # what `medot train madpot` reads from it
    assert parsed.abnormal_shots == str((root / "defects").resolve()) and parsed.data == str((root / "mvtec").resolve())
    assert "--abnormal-shots defects" in job_detail(manager, manager.list_jobs()[0].id, "session:a")[0]
    plain = launch("mvtec", "", method="pradot")  # another method: the field is not passed
    assert not any(a.startswith("--abnormal-shots") for a in plain)
    queued = len(manager.list_jobs())
    outside = tmp_path / "outside"
    outside.mkdir()
    for folder, expected in [(str(outside), "outside the data root"), ("../outside", "outside the data root"),
                             ("missing", "does not exist"), ("mvtec/cat/test/crack", "inside the test split"),
                             ("", "training images are all normal")]:
        message = _error(lambda: launch("mvtec", folder))
        assert expected in message and "\n" not in message, (folder, message)
    assert "fewer than the 3 shots" in _error(lambda: launch("mvtec", "defects", shots=3))
    for dataset in ("synthetic", "pair"):  # MVFA data has its own abnormal shots
        if dataset == "pair":
            (root / "pair" / "Obj_AD" / "valid").mkdir(parents=True)
        assert "for MVTec AD folders" in _error(lambda: launch(dataset, "defects"))
    assert len(manager.list_jobs()) == queued  # nothing was queued
