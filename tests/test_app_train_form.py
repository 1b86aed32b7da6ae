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
