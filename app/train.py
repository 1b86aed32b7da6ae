"""Train tab: launch few-shot training jobs (``medot train <method>`` in a worker process, through
:class:`medot.jobs.JobManager`), watch their progress and loss, cancel and resume them.

Jobs live in the SQLite registry under ``$MEDOT_HOME``, so they outlive the app: a job that was
running when the app died shows as interrupted and can be resumed. Finished models appear in the
other tabs' model lists (refreshed by the same timer)."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Sequence

import gradio as gr
import plotly.graph_objects as go

from app.feedback import user_errors
from app.models import model_roots
from medot.checkpoint import list_checkpoints
from medot.config import Settings
from medot.jobs import SYNTHETIC, JobError, JobManager, JobRecord
from medot.jobs.arguments import KMAT_PAPER_TASKS

POLL_SECONDS = 2.0
JOB_COLUMNS = ["job", "method", "status", "epoch", "loss", "dataset", "created", "model / error"]
ModelRefresher = tuple[gr.Dropdown, Callable[[], list[tuple[str, str]]]]


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
               seed: float, lambda_anc: float, lambda_fgw: float, backbone: str) -> str:
    """Queue a job; returns a status line. Arguments a method's job does not accept are left out."""
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
    }
    arguments = {name: value for name, value in wanted.items() if name in accepted and value is not None}
    with user_errors():
        job_id = manager.submit(method, arguments)
    left_out = sorted(set(wanted) - set(accepted))
    note = f" ({', '.join(left_out)}: not taken by {method} jobs, its defaults apply)" if left_out else ""
    return f"Job {job_id} ({method}) queued{note}."


class SessionJobs:
    """At most ``limit`` queued or running jobs per session (the login name when the app has one,
    else Gradio's session): who launched what is kept only while those jobs are active."""

    def __init__(self, manager: JobManager, limit: int) -> None:
        self.manager, self.limit = manager, limit
        self._jobs: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    def submit(self, owner: str, submit: Callable[[], str]) -> str:
        with self._lock:
            active = {job for job in self._jobs.get(owner, set()) if self._active(job)}
            if len(active) >= self.limit:
                raise gr.Error(
                    f"You already have {len(active)} job(s) queued or running ({', '.join(map(str, sorted(active)))}), "
                    f"the most one session may have ({self.limit}); wait for one to finish or cancel one.",
                    print_exception=False,
                )
            status = submit()
            active.add(int(status.split()[1]))
            self._jobs[owner] = active
            for other in [key for key, jobs in self._jobs.items() if not jobs]:
                del self._jobs[other]
            return status

    def _active(self, job_id: int) -> bool:
        try:
            return self.manager.registry.get(job_id).status in ("queued", "running")
        except JobError:
            return False


def session_owner(request: gr.Request | None) -> str:
    if request is None:
        return ""
    return f"user:{request.username}" if getattr(request, "username", None) else f"session:{request.session_hash}"


def job_rows(manager: JobManager) -> list[list]:
    rows = []
    for job in manager.list_jobs():
        epoch = "" if job.epoch is None else f"{job.epoch}/{job.total_epochs or '?'}"
        loss = "" if job.loss is None else f"{job.loss:.4f}"
        outcome = str(job.checkpoint_path or "") or (job.error or "").split("\n")[0]
        rows.append([job.id, job.method, job.status, epoch, loss, str(job.arguments.get("dataset", "")),
                     job.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"), outcome])
    return rows


def job_detail(manager: JobManager, job_id: int | None) -> tuple[str, str, go.Figure | None]:
    """(status line, log tail, loss curve) of one job."""
    if job_id is None:
        return "Select a job.", "", None
    with user_errors():
        job = manager.get(int(job_id))
        events = manager.progress(job.id)
        log = manager.log_tail(job.id, 40)
    status = f"**Job {job.id}** ({job.method}): **{job.status}**"
    if job.epoch is not None:
        status += f", epoch {job.epoch}/{job.total_epochs or '?'}"
    if job.checkpoint_path:
        status += f"; model: `{job.checkpoint_path}`"
    if job.error:
        status += f"  \n{job.error.splitlines()[0]}"
    if job.status in ("interrupted", "cancelled", "failed"):
        status += "  \nResume continues it from its last saved state."
    return status, log, loss_curve(job, events)


def loss_curve(job: JobRecord, events: Sequence) -> go.Figure | None:
    points = [(e.step, e.metrics["loss"]) for e in events if isinstance(e.metrics, dict) and "loss" in e.metrics]
    if not points:
        return None
    figure = go.Figure(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name="loss"))
    figure.update_layout(title=f"Job {job.id}: training loss", xaxis_title="optimiser step", yaxis_title="loss",
                         height=320, margin={"t": 40, "b": 40})
    return figure


def stop_job(manager: JobManager, job_id: int | None) -> str:
    if job_id is None:
        raise gr.Error("Select a job to cancel.", print_exception=False)
    with user_errors():
        job = manager.cancel(int(job_id))
    return f"Job {job.id} is {job.status}."


def resume_job(manager: JobManager, job_id: int | None) -> str:
    if job_id is None:
        raise gr.Error("Select a job to resume.", print_exception=False)
    with user_errors():
        job = manager.resume(int(job_id))
    return f"Job {job.id} is {job.status} again (resuming)."


def build_train_tab(manager: JobManager, settings: Settings, model_dropdowns: Sequence[ModelRefresher],
                    max_session_jobs: int | None = None) -> None:
    methods = trainable_methods(manager)
    sessions = SessionJobs(manager, max_session_jobs) if max_session_jobs else None
    gr.Markdown(
        f"Jobs run `medot train <method>` in a worker process and are kept in `{manager.registry.path}`. "
        f"Datasets: the synthetic demo set or a folder under the data root `{settings.data_root}`."
    )
    with gr.Row():
        with gr.Column():
            method = gr.Dropdown(methods, value=methods[0] if methods else None, label="Method")
            dataset = gr.Dropdown(dataset_choices(settings, methods[0] if methods else None), value=SYNTHETIC,
                                  label="Dataset", allow_custom_value=True)  # the job manager checks every value
            typed_path = gr.Textbox(label="…or a folder path under the data root", placeholder=str(settings.data_root))
            with gr.Row():
                shots = gr.Number(4, label="Shots per class", precision=0, minimum=1)
                epochs = gr.Number(10, label="Epochs", precision=0, minimum=1)
                seed = gr.Number(1, label="Seed", precision=0, minimum=0)
            with gr.Row():
                lambda_anc = gr.Number(1.0, label="λ_anc (K-MaT)", minimum=0)
                lambda_fgw = gr.Number(1.0, label="λ_fgw (K-MaT)", minimum=0)
                backbone = gr.Dropdown(["auto", "lite", "biomedclip"], value="auto", label="Backbone")
            launch = gr.Button("Launch training job", variant="primary")
            launched = gr.Markdown()
        with gr.Column():
            jobs = gr.Dataframe(job_rows(manager), headers=JOB_COLUMNS, label="Jobs", interactive=False)
            job = gr.Dropdown([record.id for record in manager.list_jobs()], label="Job", value=None,
                              allow_custom_value=True)
            with gr.Row():
                cancel = gr.Button("Cancel job", variant="stop")
                resume = gr.Button("Resume job")
                refresh = gr.Button("Refresh")
            status = gr.Markdown()
            curve = gr.Plot(label="Loss")
            log = gr.Code(label="Log (last lines)", language=None, lines=10)
    known_models = gr.State(None)

    def job_ids() -> gr.Dropdown:
        return gr.update(choices=[record.id for record in manager.list_jobs()])

    def models_changed(seen):
        current = tuple(str(path) for path, _ in list_checkpoints(*model_roots(settings)))
        if current == seen:
            return (current, *[gr.skip() for _ in model_dropdowns])
        return (current, *[gr.update(choices=choices()) for _, choices in model_dropdowns])

    def tick(selected, seen):
        return (job_rows(manager), job_ids(), *job_detail(manager, selected), *models_changed(seen))

    watch_outputs = [jobs, job, status, log, curve, known_models, *[dropdown for dropdown, _ in model_dropdowns]]
    def launch_job(method, dataset, typed_path, shots, epochs, seed, lambda_anc, lambda_fgw, backbone,
                   request: gr.Request):
        form = (method, dataset, typed_path, shots, epochs, seed, lambda_anc, lambda_fgw, backbone)
        if sessions is None:
            return submit_job(manager, *form)
        return sessions.submit(session_owner(request), lambda: submit_job(manager, *form))

    launch.click(
        launch_job,
        inputs=[method, dataset, typed_path, shots, epochs, seed, lambda_anc, lambda_fgw, backbone],
        outputs=[launched],
        api_name="submit_job",
    )
    method.change(lambda m: gr.update(choices=dataset_choices(settings, m), value=SYNTHETIC), inputs=[method],
                  outputs=[dataset], api_name=False)
    cancel.click(lambda j: stop_job(manager, j), inputs=[job], outputs=[launched], api_name="cancel_job")
    resume.click(lambda j: resume_job(manager, j), inputs=[job], outputs=[launched], api_name="resume_job")
    refresh.click(lambda: job_rows(manager), outputs=[jobs], api_name="jobs")
    job.change(lambda j: job_detail(manager, j), inputs=[job], outputs=[status, log, curve], api_name=False)
    gr.Timer(POLL_SECONDS).tick(tick, inputs=[job, known_models], outputs=watch_outputs, api_name=False,
                                show_progress="hidden")
