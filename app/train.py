"""Train tab: launch few-shot training jobs (``medot train <method>`` in a worker process, through
:class:`medot.jobs.JobManager`), watch their progress and loss, cancel and resume them.

Jobs live in the SQLite registry under ``$MEDOT_HOME``, so they outlive the app: a job that was
running when the app died shows as interrupted and can be resumed. Finished models appear in the
other tabs' model lists (refreshed by the same timer).

The form shows only the fields the chosen method takes (the K-MaT variant list holds the
prompt-learning baselines), and of the variant's own options (:data:`VARIANT_FIELDS`: OPTiML's
``--stages``, VICRegL's ``--vicregl-alpha`` / ``--num-matches``, K-MaT's ``--descriptions`` and the
baselines' weights) only those of the chosen variant - empty means the command's default, and the job
manager checks every value before queuing; a job's details list its command options. MADPOT jobs on
MVTec AD data (normal-only training) take a folder of abnormal shots under the data root. The line
under Launch follows the job it names (queued, running, finished, failed: :func:`launch_line`). It offers only
the backbones available here, and takes a zipped dataset
into the data root (:func:`medot.data.archive.import_dataset_zip`). A finished job gets a result
card (:func:`medot.eval.evidence.result_rows`: test metrics beside their chance level, the model
path); a job whose training ended but whose process still runs shows as evaluating.

Jobs belong to who launched them (:func:`session_owner`: the login name when the app has a login,
else the Gradio session): the table lists every job, marks yours, and shows the dataset, model,
error, log and result only of yours; only yours can be cancelled or resumed. Paths are shown
relative to the data root / ``$MEDOT_HOME`` (:func:`shown_path`), never as the server's layout."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go

from app.about import storage_notice
from app.feedback import private_paths, redact_paths, user_errors
from app.models import model_roots
from medot.backbones import available_backbones
from medot.checkpoint import checkpoint_paths, list_checkpoints
from medot.config import Settings
from medot.data.archive import import_dataset_zip
from medot.eval.evidence import result_rows
from medot.jobs import SYNTHETIC, JobError, JobManager, JobRecord, cli_flags
from medot.jobs.arguments import KMAT_PAPER_TASKS

POLL_SECONDS = 2.0
#: short headers: the table shares half the page with the form, and a long header breaks mid-word
JOB_COLUMNS = ["#", "method", "status", "epoch", "loss", "dataset", "created", "model / error", "owner"]
#: the viewer of a page built before any request: nobody's jobs are shown in detail
NOBODY = ""
ModelRefresher = tuple[gr.Dropdown, Callable[[], list[tuple[str, str]]]]
#: what Resume does, per method: K-MaT continues from its saved state; PRADOT keeps none
RESUME_NOTES = {
    "kmat": "Resume continues it from its last saved epoch (model and optimiser state).",
    "pradot": "Resume re-runs it from the start with the same settings: PRADOT keeps no optimiser state.",
}
#: events after which a still-running job is evaluating its model on the test set
TRAINING_ENDED = ("done", "early_stop")
#: form field -> job argument name (the K-MaT variant is the ``method`` argument of `medot train kmat`)
FIELD_ARGUMENTS = {"shots": "shots", "lambda_anc": "lambda_anc", "lambda_fgw": "lambda_fgw", "variant": "method",
                   "n_prototypes": "n_prototypes", "backbone": "backbone", "object": "object",
                   "abnormal_shots": "abnormal_shots"}
#: variant-specific form fields -> (method, job argument, the variants that use it); the field name is
#: the argument's (``medot train <method> --<argument>``); empty: the command's own default
VARIANT_FIELDS = {
    "stages": ("optiml", "stages", ("optiml", "vicregl")),
    "vicregl_alpha": ("optiml", "vicregl_alpha", ("vicregl",)),
    "num_matches": ("optiml", "num_matches", ("vicregl",)),
    "descriptions": ("kmat", "descriptions", ("kmat", "biomedcoop")),
    "kgcoop_lambda": ("kmat", "kgcoop_lambda", ("kgcoop",)),
    "biomedcoop_lambda1": ("kmat", "biomedcoop_lambda1", ("biomedcoop",)),
    "biomedcoop_lambda2": ("kmat", "biomedcoop_lambda2", ("biomedcoop",)),
    "biomedcoop_tau": ("kmat", "biomedcoop_tau", ("biomedcoop",)),
    "cocoop_width": ("kmat", "cocoop_width", ("cocoop",)),
}


def trainable_methods(manager: JobManager) -> list[str]:
    """The job methods that have a ``medot train`` command installed here."""
    return [m for m in manager.methods if importlib.util.find_spec(f"medot.methods.{m}") is not None]


def dataset_choices(settings: Settings, method: str | None = None) -> list[str]:
    """What a ``method`` job can train on: the synthetic demo set, then for K-MaT the paper tasks and
    the task JSON files under the data root (two levels deep), for the others the folders there."""
    root = settings.data_root
    if method == "kmat":
        files = sorted(str(p.relative_to(root)) for p in [*root.glob("*.json"), *root.glob("*/*.json")]
                       if p.is_file()) if root.is_dir() else []
        return [SYNTHETIC, *KMAT_PAPER_TASKS, *files]
    folders = sorted(str(p.relative_to(root)) for p in [*root.glob("*/"), *root.glob("*/*/")] if p.is_dir()) if root.is_dir() else []
    return [SYNTHETIC, *folders]


def submit_job(manager: JobManager, method: str, dataset: str, typed_path: str, shots: float, epochs: float,
               seed: float, lambda_anc: float, lambda_fgw: float, backbone: str, variant: str | None = None,
               n_prototypes: float | None = None, obj: str | None = None, owner: str | None = None,
               options: dict | None = None, abnormal_shots: str | None = None) -> str:
    """Queue a job of ``owner`` (:func:`session_owner`; None: the operator); returns a status line.
    ``options``: the :data:`VARIANT_FIELDS` values (numbers, or text such as ``"3 4"`` for a list;
    None or empty: the command's default); ``abnormal_shots``: MADPOT's folder of abnormal support
    images for MVTec AD data, under the data root like the dataset. Arguments a method's job does
    not accept, and options of another method or variant, are left out; the job manager checks the
    rest before queuing."""
    if method not in manager.methods:
        raise gr.Error(f"Choose a training method: {', '.join(manager.methods)}.", print_exception=False)
    accepted = manager.methods[method]
    wanted = {
        "dataset": (typed_path or "").strip() or dataset,
        "shots": shots,
        "epochs": epochs,
        "seed": seed,
        "lambda_anc": lambda_anc,
        "lambda_fgw": lambda_fgw,
        "backbone": backbone,
        "method": variant or None,
        "n_prototypes": n_prototypes or None,  # 0 or empty: the method's preset decides
        "object": (obj or "").strip() or None,
        "abnormal_shots": (abnormal_shots or "").strip() or None,
    }
    for field, value in (options or {}).items():
        if field not in VARIANT_FIELDS:
            raise gr.Error(f"Unknown training option {field!r}.", print_exception=False)
        text = value.strip() if isinstance(value, str) else value
        if text not in (None, "") and field_applies(manager, field, method, variant):
            wanted[VARIANT_FIELDS[field][1]] = text
    arguments = {name: value for name, value in wanted.items() if name in accepted and value is not None}
    with user_errors():
        job_id = manager.submit(method, arguments, owner=owner)
    return f"Job {job_id} ({method}) queued."


def follow_job(manager: JobManager, message: str, viewer: str | None = None):
    """The job dropdown after a launch: the job just queued (``"Job N (...) queued."``) selected, so
    that its progress and then its result card show without the user picking it first."""
    match = re.match(r"Job (\d+) ", message or "")
    ids = own_job_ids(manager, viewer)
    if match is None or int(match.group(1)) not in ids:
        return gr.update(choices=ids)
    return gr.update(choices=ids, value=int(match.group(1)))


#: the launch line of a job that has left the queue, by :func:`job_phase`
PHASE_LINES = {
    "running": "is running",
    "evaluating": "is evaluating its model on the test images",
    "done": "finished; its result card is on the right",
    "failed": "failed",
    "cancelled": "was cancelled",
    "interrupted": "was interrupted",
}


def launch_line(manager: JobManager, message: str, viewer: str | None = None) -> str:
    """The line under the Launch button kept current: a ``"Job N ..."`` line (queued, resumed,
    cancelled) becomes job N's state once it has left the queue (:data:`PHASE_LINES`; a failed
    job's first error line), so "queued" does not stay on screen after the job has ended. Any
    other line, a queued job's, and a line about a job the ``viewer`` may not see, are returned as
    they are."""
    match = re.match(r"Job (\d+) ", message or "")
    if match is None:
        return message
    try:
        job = manager.get(int(match.group(1)))
    except JobError:
        return message
    phase = job_phase(manager, job)
    if not _visible(job, viewer) or phase == "queued":
        return message
    line = f"Job {job.id} ({job.method}) {PHASE_LINES.get(phase, phase)}"
    if phase == "failed" and job.error:
        line += ": " + redact_paths(job.error.splitlines()[0], private_paths(manager.home, manager.data_root))
    return line + "."


def job_phase(manager: JobManager, job: JobRecord) -> str:
    """The job's status, ``evaluating`` for a running job whose training has ended."""
    if job.status == "running":
        events = manager.progress(job.id)
        if events and events[-1].kind in TRAINING_ENDED:
            return "evaluating"
    return job.status


def session_owner(request: gr.Request | None) -> str | None:
    """Who makes ``request``: ``user:<login>`` when the app has a login, else ``session:<hash>``
    (Gradio's session: one browser tab, one API client); None without a request (the operator)."""
    if request is None:
        return None
    return f"user:{request.username}" if getattr(request, "username", None) else f"session:{request.session_hash}"


def shown_path(path: str | Path, manager: JobManager) -> str:
    """A server path as users see it: relative to the data root or ``$MEDOT_HOME`` (the more
    specific of the two), e.g. ``tasks/ok.json``, ``jobs/3/model.safetensors``; a path outside both
    shows only its name. A relative path or a name (``synthetic``) is shown as it is."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    for root in sorted((manager.data_root, manager.home), key=lambda root: -len(root.parts)):
        if path == root or root in path.parents:
            return str(path.relative_to(root)) or "."
    return f"…/{path.name}"


def launched_by(job: JobRecord, viewer: str | None) -> str:
    """Who launched ``job``, as ``viewer`` sees it: you, another user / session, or the operator."""
    if viewer is not None and job.owner == viewer:
        return "you"
    if job.owner is None:
        return "operator"
    return "another user" if job.owner.startswith("user:") else "another session"


def _visible(job: JobRecord, viewer: str | None) -> bool:
    """Whether ``viewer`` sees ``job``'s dataset, model, error and log: its owner, or the operator (None)."""
    return viewer is None or job.owner == viewer


def job_rows(manager: JobManager, viewer: str | None = None) -> list[list]:
    """The jobs table as ``viewer`` (:func:`session_owner`; None: the operator) sees it: every job,
    the dataset and model / error only of the viewer's own, paths relative (:func:`shown_path`)."""
    rows = []
    paths = private_paths(manager.home, manager.data_root)
    for job in manager.list_jobs():
        epoch = "" if job.epoch is None else f"{job.epoch}/{job.total_epochs or '?'}"
        loss = "" if job.loss is None else f"{job.loss:.3g}"
        dataset, outcome = "", ""
        if _visible(job, viewer):
            dataset = shown_path(str(job.arguments.get("dataset", "")), manager)
            outcome = (shown_path(job.checkpoint_path, manager) if job.checkpoint_path
                       else redact_paths((job.error or "").split("\n")[0], paths))
        rows.append([job.id, job.method, job_phase(manager, job), epoch, loss, dataset,
                     job.created_at.astimezone().strftime("%m-%d %H:%M"), outcome, launched_by(job, viewer)])
    return rows


def own_job_ids(manager: JobManager, viewer: str | None = None) -> list[int]:
    """The ids of the jobs ``viewer`` may act on, newest first."""
    return [job.id for job in manager.list_jobs() if _visible(job, viewer)]


def job_detail(manager: JobManager, job_id: int | None, viewer: str | None = None) -> tuple[str, str, go.Figure | None]:
    """(status line, log tail, loss curve) of one job; of another's job only its status."""
    if job_id is None:
        return "Select a job.", "", None
    with user_errors():
        job = manager.get(int(job_id))
    phase = job_phase(manager, job)
    if not _visible(job, viewer):
        return (f"**Job {job.id}** ({job.method}): **{phase}**, launched by {launched_by(job, viewer)}: only "
                "who launched it sees its log and result, and can cancel or resume it."), "", None
    paths = private_paths(manager.home, manager.data_root)
    with user_errors():
        events = manager.progress(job.id)
        log = redact_paths(manager.log_tail(job.id, 40), paths)
    status = f"**Job {job.id}** ({job.method}): **{phase}**"
    if job.epoch is not None:
        status += f", epoch {job.epoch}/{job.total_epochs or '?'}"
    if job.arguments:
        status += f"  \nSettings: `{redact_paths(job_settings(manager, job), paths)}`"
    if phase == "evaluating":
        status += " - training has ended; the model is being evaluated on the test images"
    if job.error:
        status += f"  \n{redact_paths(job.error.splitlines()[0], paths)}"
    if job.status in ("interrupted", "cancelled", "failed"):
        status += "  \n" + RESUME_NOTES.get(job.method, "Resume re-runs it with the same settings.")
    if job.status == "done" and job.checkpoint_path:
        status += "\n\n" + result_card(job, shown_path(job.checkpoint_path, manager))
    if job.status == "running":
        status += live_progress(events)
    return status, log, loss_curve(job, events)


def result_card(job: JobRecord, shown: str | None = None) -> str:
    """Markdown card of a finished job: its test metrics beside their chance level, and the model
    (named ``shown``, by default its path)."""
    shown = shown or str(job.checkpoint_path)
    try:
        meta = json.loads(checkpoint_paths(job.checkpoint_path)[1].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"**Model:** `{shown}` (its metadata cannot be read)"
    rows = result_rows(meta)
    lines = [f"### Result of job {job.id}: {meta.get('method', job.method)}"
             + (f" on {meta['task']}" if meta.get("task") else "")]
    if rows:
        lines += ["| test metric | value | chance level |", "|---|---|---|"]
        lines += [f"| {r.metric} | {r.shown(r.value)} | {r.shown(r.chance)} |" for r in rows]
    else:
        lines.append("This model records no test metrics.")
    lines.append(f"\n**Model:** `{shown}` - listed in the other tabs' model lists.")
    return "\n".join(lines)


def live_progress(events: Sequence) -> str:
    """The last in-epoch progress a job reported (``progress`` / ``eta_seconds`` of its step events),
    as a line to append to its status, or ``""``."""
    for event in reversed(events):
        metrics = event.metrics if isinstance(event.metrics, dict) else {}
        if "progress" in metrics and "eta_seconds" in metrics:
            line = f"  \n{100 * metrics['progress']:.0f} % done, about {_duration(metrics['eta_seconds'])} left"
            return line + (f" ({event.message})" if event.message else "")
    return ""


def _duration(seconds: float) -> str:
    whole = max(0, int(round(seconds)))
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 60 else f"{whole} s"


def pradot_preset_note() -> str:
    """Which PRADOT settings a job gets on this machine (its ``--preset auto``)."""
    import torch

    if torch.cuda.is_available():
        return "PRADOT jobs use the paper's settings (a CUDA GPU is present)."
    return ("No GPU here: PRADOT jobs use the **CPU preset** (one layer, 4 prototypes per cell, bounded OT "
            "batches, 10 epochs unless set), which trains in minutes; `medot train pradot --preset paper` runs "
            "the authors' full setting.")


def loss_curve(job: JobRecord, events: Sequence) -> go.Figure | None:
    points = [(e.step, e.metrics["loss"]) for e in events if isinstance(e.metrics, dict) and "loss" in e.metrics]
    if not points:
        return None
    figure = go.Figure(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name="loss"))
    figure.update_layout(title=f"Job {job.id}: training loss", xaxis_title="optimiser step", yaxis_title="loss",
                         height=320, margin={"t": 40, "b": 40}, xaxis=whole_number_axis([p[0] for p in points]))
    return figure


def whole_number_axis(values: Sequence[float], most_ticks: int = 8) -> dict:
    """Plotly axis settings with ticks on whole numbers only (steps, epochs): a 1-2-5 step of at
    least 1 giving at most ``most_ticks`` ticks, a range padded by half a unit (Plotly's own ticks
    on a one- or two-point curve were 0.2, 0.4, ... and -1 for step 0)."""
    low, high = min(values), max(values)
    step = 1
    while (high - low) / step > most_ticks:
        step = step * 5 // 2 if str(step).startswith("2") else step * 2  # 1, 2, 5, 10, 20, 50, ...
    pad = max(0.5, 0.05 * (high - low))
    return {"tickmode": "linear", "tick0": 0, "dtick": step, "tickformat": "d", "range": [low - pad, high + pad]}


def stop_job(manager: JobManager, job_id: int | None, owner: str | None = None) -> str:
    """Cancel ``job_id`` for ``owner`` (:func:`session_owner`): only that owner's job."""
    if job_id is None:
        raise gr.Error("Select a job to cancel.", print_exception=False)
    with user_errors():
        job = manager.cancel(int(job_id), owner=owner)
    return f"Job {job.id} is {job.status}."


def resume_job(manager: JobManager, job_id: int | None, owner: str | None = None) -> str:
    """Resume ``job_id`` for ``owner`` (:func:`session_owner`): only that owner's job."""
    if job_id is None:
        raise gr.Error("Select a job to resume.", print_exception=False)
    with user_errors():
        job = manager.resume(int(job_id), owner=owner)
    return f"Job {job.id} is {job.status} again (resuming)."


def backbone_choices(manager: JobManager) -> list[str]:
    """``auto`` and the backbones a job can load here (an unavailable one is not offered)."""
    accepted = {name for arguments in manager.methods.values() if "backbone" in arguments
                for name in arguments["backbone"].choices}
    return ["auto", *[s.name for s in available_backbones() if s.available and s.name in accepted]]


def variant_choices(manager: JobManager, method: str | None) -> list[str]:
    """The variants (the method and its baselines) of ``method``'s ``--method`` flag, if it has one."""
    argument = manager.methods.get(method or "", {}).get("method")
    return list(argument.choices) if argument is not None else []


def shown_fields(manager: JobManager, method: str | None) -> list:
    """Updates of the method-specific fields (:data:`FIELD_ARGUMENTS` order): shown only when the
    method takes them; the variant list holds that method's own variants."""
    accepted = manager.methods.get(method or "", {})
    updates = []
    for field, argument in FIELD_ARGUMENTS.items():
        if field == "variant":
            variants = variant_choices(manager, method)
            updates.append(gr.update(visible=bool(variants), choices=variants, value=variants[0] if variants else None))
        else:
            updates.append(gr.update(visible=argument in accepted))
    return updates


def field_applies(manager: JobManager, field: str, method: str | None, variant: str | None) -> bool:
    """Whether the :data:`VARIANT_FIELDS` ``field`` applies to a ``method`` job of ``variant`` (None:
    the method's default variant, the first of its list)."""
    owner, argument, variants = VARIANT_FIELDS[field]
    if method != owner or argument not in manager.methods.get(method or "", {}):
        return False
    choices = variant_choices(manager, method)
    return (variant or (choices[0] if choices else None)) in variants


def variant_fields(manager: JobManager, method: str | None, variant: str | None = None) -> list:
    """Updates of the :data:`VARIANT_FIELDS` fields (in that order): shown only for their method and
    variant (None: the method's first variant)."""
    return [gr.update(visible=field_applies(manager, field, method, variant)) for field in VARIANT_FIELDS]


def job_settings(manager: JobManager, job: JobRecord) -> str:
    """The job's command options as ``--name value`` text, paths relative (:func:`shown_path`)."""
    shown = {name: shown_path(value, manager) if isinstance(value, str) and Path(value).is_absolute() else value
             for name, value in job.arguments.items()}
    return " ".join(flag.replace("=", " ", 1) for flag in cli_flags(shown))


def import_dataset(settings: Settings, archive: str | None, name: str, method: str | None = None):
    """Unpack an uploaded zip into the data root; returns (message, dataset dropdown update for
    ``method``: the new folder selected when that method trains on it)."""
    if not archive:
        raise gr.Error("Upload a .zip of the dataset folder first.", print_exception=False)
    with user_errors():
        folder, layout = import_dataset_zip(archive, settings.data_root, name.strip() or None)
    relative = str(folder.relative_to(settings.data_root))
    choices = dataset_choices(settings, method)
    message = f"Imported `{relative}` ({layout.kind.replace('_', ' ')}: {', '.join(layout.names)}) into the data root"
    if relative in choices:
        return message + "; it is selected as the dataset.", gr.update(choices=choices, value=relative)
    return (message + f". {method} jobs do not train on a plain folder: describe it in a task file "
            "(`medot task init`) and choose that.", gr.update(choices=choices))


def build_train_tab(manager: JobManager, settings: Settings, model_dropdowns: Sequence[ModelRefresher]) -> None:
    """The Train tab; how many jobs one user may have queued is the ``manager``'s
    ``max_active_per_owner``."""
    methods = trainable_methods(manager)
    variants = variant_choices(manager, methods[0] if methods else None)
    first = manager.methods.get(methods[0], {}) if methods else {}
    takes = {field: argument in first for field, argument in FIELD_ARGUMENTS.items()}
    notice = storage_notice(settings.home)
    gr.Markdown(
        "Jobs run `medot train <method>` in a worker process and are kept in `$MEDOT_HOME/jobs.sqlite3`. "
        "Datasets: the synthetic demo set or a folder under the data root (`$MEDOT_DATA_ROOT`). "
        "You see the details of, and can cancel or resume, only the jobs you launched."
        + (f"\n\n{notice}" if notice else ""),
        elem_id="train-intro",
    )
    if "pradot" in methods:
        gr.Markdown(pradot_preset_note())
    with gr.Row():
        with gr.Column(scale=2):
            method = gr.Dropdown(methods, value=methods[0] if methods else None, label="Method", elem_id="train-method")
            variant = gr.Dropdown(variants, value=variants[0] if variants else None,
                                  label="Variant: the method or one of its baselines (for K-MaT: the prompt-learning "
                                  "baselines)", elem_id="train-variant", allow_custom_value=True,
                                  visible=takes["variant"])
            dataset = gr.Dropdown(dataset_choices(settings, methods[0] if methods else None), value=SYNTHETIC,
                                  label="Dataset", allow_custom_value=True)  # the job manager checks every value
            typed_path = gr.Textbox(label="…or a folder path under the data root",
                                    placeholder="relative to the data root, e.g. my-dataset or tasks/my-task.json")
            with gr.Accordion("Upload a zipped dataset into the data root", open=False):
                archive = gr.File(label="Dataset (.zip of class folders, MVTec or MVFA layout)", file_types=[".zip"],
                                  type="filepath")
                archive_name = gr.Textbox(label="Folder name in the data root (default: the zip's name)")
                unpack = gr.Button("Import the dataset")
                imported = gr.Markdown()
            with gr.Row():
                shots = gr.Number(4, label="Shots per class", precision=0, minimum=1, elem_id="train-shots",
                                  visible=takes["shots"])
                epochs = gr.Number(10, label="Epochs", precision=0, minimum=1)
                seed = gr.Number(1, label="Seed", precision=0, minimum=0)
            with gr.Row():
                lambda_anc = gr.Number(1.0, label="λ_anc (anchor loss weight)", minimum=0, elem_id="train-lambda-anc",
                                       visible=takes["lambda_anc"])
                lambda_fgw = gr.Number(1.0, label="λ_fgw (FGW loss weight)", minimum=0, elem_id="train-lambda-fgw",
                                       visible=takes["lambda_fgw"])
                n_prototypes = gr.Number(0, label="Prototypes per cell (0: the preset's)", precision=0,
                                         minimum=0, elem_id="train-prototypes", visible=takes["n_prototypes"])
                choices = backbone_choices(manager)
                backbone = gr.Dropdown(choices, value="auto", label="Backbone", visible=takes["backbone"])
            obj = gr.Textbox("", label="Object (the MVFA <Obj>_AD folder or the MVTec AD category, e.g. Retina on "
                             "the synthetic set)", elem_id="train-object", visible=takes["object"])
            abnormal_shots = gr.Textbox("", label="Abnormal shots: MVTec AD data only (its training images are all "
                                        "normal) - a folder of abnormal images under the data root, outside the test "
                                        "split, e.g. my-abnormal (masks optional in its masks/ folder)",
                                        placeholder="empty for MVFA data and the synthetic set",
                                        elem_id="train-abnormal-shots", visible=takes["abnormal_shots"])
            # the variant's own options (VARIANT_FIELDS), as `medot train <method> --help` names them
            applies = {field: field_applies(manager, field, methods[0] if methods else None, None)
                       for field in VARIANT_FIELDS}
            with gr.Row():
                stages = gr.Textbox("", label="Dense stages (ResNet stage numbers, always with 4, e.g. 3 4; "
                                    "empty: 4)", elem_id="train-stages", visible=applies["stages"])
                vicregl_alpha = gr.Number(None, label="VICRegL α: weight of the global term, in [0, 1] "
                                          "(empty: 0.75)", elem_id="train-vicregl-alpha",
                                          visible=applies["vicregl_alpha"])
                num_matches = gr.Textbox("", label="VICRegL matches kept per direction, K_S K_T (empty: 20 4)",
                                         elem_id="train-num-matches", visible=applies["num_matches"])
            descriptions = gr.Textbox("", label="Class descriptions (JSON under the data root, e.g. "
                                      "tasks/chest.json; empty: the task's own)", elem_id="train-descriptions",
                                      visible=applies["descriptions"])
            with gr.Row():
                kgcoop_lambda = gr.Number(None, label="KgCoOp λ (empty: 8)", elem_id="train-kgcoop-lambda",
                                          visible=applies["kgcoop_lambda"])
                biomedcoop_lambda1 = gr.Number(None, label="BiomedCoOp λ1, L_SCCM (empty: 1)",
                                               elem_id="train-biomedcoop-lambda1",
                                               visible=applies["biomedcoop_lambda1"])
                biomedcoop_lambda2 = gr.Number(None, label="BiomedCoOp λ2, L_KDSP (empty: 1)",
                                               elem_id="train-biomedcoop-lambda2",
                                               visible=applies["biomedcoop_lambda2"])
                biomedcoop_tau = gr.Number(None, label="BiomedCoOp τ, pruning z-score (empty: 1.5)",
                                           elem_id="train-biomedcoop-tau", visible=applies["biomedcoop_tau"])
                cocoop_width = gr.Number(None, label="CoCoOp meta-net width (empty: embedding dim / 16)",
                                         precision=0, elem_id="train-cocoop-width", visible=applies["cocoop_width"])
            launch = gr.Button("Launch training job", variant="primary")
            launched = gr.Markdown()
        with gr.Column(scale=3):
            jobs = gr.Dataframe(job_rows(manager, NOBODY), headers=JOB_COLUMNS, label="Jobs", interactive=False,
                                wrap=True, column_widths=["3%", "10%", "11%", "9%", "7%", "13%", "11%", "26%", "10%"],
                                elem_id="jobs")
            job = gr.Dropdown([], label="Job (yours)", value=None, allow_custom_value=True)
            with gr.Row():
                cancel = gr.Button("Cancel job", variant="stop")
                resume = gr.Button("Resume job")
                refresh = gr.Button("Refresh")
            status = gr.Markdown(elem_id="job-status")
            curve = gr.Plot(label="Loss")
            log = gr.Code(label="Log (last lines)", language=None, lines=10)
    fields = [shots, lambda_anc, lambda_fgw, variant, n_prototypes, backbone, obj, abnormal_shots]  # FIELD_ARGUMENTS order
    method.change(lambda m: shown_fields(manager, m), inputs=[method], outputs=fields, api_name=False)
    options = [stages, vicregl_alpha, num_matches, descriptions, kgcoop_lambda, biomedcoop_lambda1,
               biomedcoop_lambda2, biomedcoop_tau, cocoop_width]  # VARIANT_FIELDS order
    method.change(lambda m: variant_fields(manager, m), inputs=[method], outputs=options, api_name=False)
    variant.change(lambda m, v: variant_fields(manager, m, v), inputs=[method, variant], outputs=options,
                   api_name=False)
    unpack.click(lambda a, n, m: import_dataset(settings, a, n, m), inputs=[archive, archive_name, method],
                 outputs=[imported, dataset], api_name="import_dataset")
    known_models = gr.State(None)

    def job_ids(viewer: str | None) -> gr.Dropdown:
        return gr.update(choices=own_job_ids(manager, viewer))

    def models_changed(seen):
        current = tuple(str(path) for path, _ in list_checkpoints(*model_roots(settings)))
        if current == seen:
            return (current, *[gr.skip() for _ in model_dropdowns])
        return (current, *[gr.update(choices=choices()) for _, choices in model_dropdowns])

    def tick(selected, seen, line, request: gr.Request):
        viewer = session_owner(request)
        current = launch_line(manager, line, viewer)
        return (job_rows(manager, viewer), job_ids(viewer), *job_detail(manager, selected, viewer),
                gr.skip() if current == line else current, *models_changed(seen))

    watch_outputs = [jobs, job, status, log, curve, launched, known_models,
                     *[dropdown for dropdown, _ in model_dropdowns]]
    def launch_job(method, dataset, typed_path, shots, epochs, seed, lambda_anc, lambda_fgw, backbone,
                   variant=None, n_prototypes=None, obj=None, stages=None, vicregl_alpha=None, num_matches=None,
                   descriptions=None, kgcoop_lambda=None, biomedcoop_lambda1=None, biomedcoop_lambda2=None,
                   biomedcoop_tau=None, cocoop_width=None, abnormal_shots=None, request: gr.Request = None):
        form = (method, dataset, typed_path, shots, epochs, seed, lambda_anc, lambda_fgw, backbone, variant, n_prototypes, obj)
        values = (stages, vicregl_alpha, num_matches, descriptions, kgcoop_lambda, biomedcoop_lambda1,
                  biomedcoop_lambda2, biomedcoop_tau, cocoop_width)
        return submit_job(manager, *form, owner=session_owner(request), options=dict(zip(VARIANT_FIELDS, values)),
                          abnormal_shots=abnormal_shots)

    def follow_launched(message: str, request: gr.Request):
        return follow_job(manager, message, session_owner(request))

    launch.click(
        launch_job,
        inputs=[method, dataset, typed_path, shots, epochs, seed, lambda_anc, lambda_fgw, backbone, variant, n_prototypes, obj,
                *options, abnormal_shots],
        outputs=[launched],
        api_name="submit_job",
    ).success(follow_launched, inputs=[launched], outputs=[job], api_name=False)
    method.change(lambda m: gr.update(choices=dataset_choices(settings, m), value=SYNTHETIC), inputs=[method],
                  outputs=[dataset], api_name=False)
    def cancelling(j, request: gr.Request):  # said at once: a running job takes up to cancel_grace_s to stop
        try:
            manager.owned(int(j), session_owner(request), "cancel")
        except (TypeError, ValueError, JobError):
            return ""  # no job, or not the caller's: the cancel itself says why
        return f"Cancelling job {j}: asking it to save its state and stop (up to {manager.cancel_grace_s:g} s)…"

    def cancel_job(j, request: gr.Request):
        return stop_job(manager, j, session_owner(request))

    def resume_own_job(j, request: gr.Request):
        return resume_job(manager, j, session_owner(request))

    def listed_jobs(request: gr.Request):
        return job_rows(manager, session_owner(request))

    def selected_job(j, request: gr.Request):
        return job_detail(manager, j, session_owner(request))

    cancel.click(cancelling, inputs=[job], outputs=[launched], queue=False, api_name=False,
                 ).then(cancel_job, inputs=[job], outputs=[launched], api_name="cancel_job")
    resume.click(resume_own_job, inputs=[job], outputs=[launched], api_name="resume_job")
    refresh.click(listed_jobs, outputs=[jobs], api_name="jobs")
    job.change(selected_job, inputs=[job], outputs=[status, log, curve], api_name="job_detail")
    gr.Timer(POLL_SECONDS).tick(tick, inputs=[job, known_models, launched], outputs=watch_outputs, api_name=False,
                                show_progress="hidden")
