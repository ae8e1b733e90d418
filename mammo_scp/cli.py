"""The `mammo-scp` command.

Only ``serve``, ``work``, ``preview`` and ``models`` load the models and TensorFlow: every
other command imports what it uses inside its handler, so that ``jobs list`` answers in a
fraction of a second (it reads the database with the driver alone:
:mod:`mammo_scp.jobs.report`). The commands that read a node's database (``jobs``, ``studies``,
``preview``) say on stderr which configuration and database they use, and refuse a database
that does not exist instead of creating an empty one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mammo_scp import __version__
from mammo_scp.assessment import StudyAssessment, describe_thresholds
from mammo_scp.config import (
    CONFIG_PATH_ENV,
    SYSTEM_CONFIG,
    ConfigError,
    Settings,
    load_settings,
    locate_config,
    render_settings,
)
from mammo_scp.jobs.report import NoSchema, Reader, Unreachable, mask_password
from mammo_scp.jobs.states import JobState
from mammo_scp.training.cli import add_models_parser

if TYPE_CHECKING:
    from mammo_scp.db import Database


class NodeNotFound(Exception):
    """A read command found no node database where its configuration points."""


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def _database(settings: Settings) -> Database:
    from mammo_scp.db import Database, upgrade

    db = Database(settings.db_url)
    upgrade(db)
    return db


def _node_database(args: argparse.Namespace) -> tuple[Settings, str, str]:
    """The settings, the database URL, and how to point the command at the node, for the
    commands that read (or retry) a node's jobs. Says on stderr which configuration and
    database they use; raises :class:`NodeNotFound` naming where it looked when the
    configuration names an SQLite file that does not exist (nothing is created)."""
    found = locate_config(getattr(args, "config", None))
    settings = load_settings(found.path)
    url = settings.db_url
    print(f"mammo-scp: configuration {found.describe()}; database {mask_password(url)}",
          file=sys.stderr)
    how = (f"point the command at the node's configuration with --config FILE or "
           f"{CONFIG_PATH_ENV}=FILE (the file 'mammo-scp serve' runs with), or install it as "
           f"{SYSTEM_CONFIG}")
    if url.startswith("sqlite:"):
        path = Path(url.partition("://")[2][1:])
        if not path.is_file():
            relative = ("" if settings.data_dir.is_absolute() or settings.database_url else
                        f", data_dir {str(settings.data_dir)!r} taken from the current "
                        f"directory {Path.cwd()}")
            raise NodeNotFound(
                f"no node database at {path} (configuration: {found.describe()}{relative}); "
                f"this command reads an existing node's database and does not create one: "
                f"{how}")
    return settings, url, how


def _no_schema(url: str, how: str, exc: Exception) -> NodeNotFound:
    return NodeNotFound(f"the database {mask_password(url)} holds no mammo-scp tables ({exc}): "
                        f"{how}; 'mammo-scp db upgrade' creates them for a new node")


def _reader(args: argparse.Namespace) -> Reader:
    """A read-only connection to the node's database, without SQLAlchemy (fast)."""
    _, url, how = _node_database(args)
    try:
        return Reader(url)
    except Unreachable as exc:
        raise NodeNotFound(f"cannot open the database {mask_password(url)} ({exc}); "
                           f"{how}") from exc
    except NoSchema as exc:
        raise _no_schema(url, how, exc) from exc


def _existing_database(args: argparse.Namespace) -> tuple[Settings, Database]:
    """The settings and the node's database (SQLAlchemy), for ``jobs retry`` and
    ``preview``; never creates it nor upgrades its schema (``serve``, ``work`` and
    ``db upgrade`` do)."""
    import sqlalchemy as sa

    from mammo_scp.db import Database, DatabaseUnavailable

    settings, url, how = _node_database(args)
    db = Database(url)
    try:
        db.ping()
        with db.engine.connect() as conn:
            conn.execute(sa.text("SELECT version_num FROM alembic_version"))
    except DatabaseUnavailable as exc:
        db.dispose()
        raise NodeNotFound(f"cannot reach the database {mask_password(url)} ({exc}); "
                           f"{how}") from exc
    except sa.exc.SQLAlchemyError as exc:
        db.dispose()
        raise _no_schema(url, how, exc) from exc
    return settings, db


def _run_node(args: argparse.Namespace, with_scp: bool) -> int:
    from mammo_scp.node import StartupError, configure_logging, run

    settings = _settings(args)
    configure_logging(settings.log_level)
    try:
        return run(settings, with_scp=with_scp)
    except StartupError as exc:
        print(f"mammo-scp: {exc}", file=sys.stderr)
        return 2


def cmd_serve(args: argparse.Namespace) -> int:
    return _run_node(args, with_scp=True)


def cmd_work(args: argparse.Namespace) -> int:
    return _run_node(args, with_scp=False)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from mammo_scp.node import configure_logging

    settings = _settings(args)
    configure_logging(settings.log_level)
    _database(settings)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    print(render_settings(_settings(args)), end="")
    return 0


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[str(row.get(c, "") if row.get(c) is not None else "-") for c in columns]
             for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _exam(assessment: dict[str, Any] | None) -> str | None:
    """A job's exam category and score, for a table cell: 'elevated 41%'."""
    if assessment is None:
        return None
    exam = assessment["exam"]
    return f"{exam['category']} {100.0 * exam['score']:.0f}%"


def cmd_jobs_list(args: argparse.Namespace) -> int:
    reader = _reader(args)
    try:
        rows = reader.jobs(JobState(args.state).value if args.state else None, sort=args.sort)
    finally:
        reader.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        row["deliveries"] = ", ".join(f"{n} {s}" for s, n in sorted(row["deliveries"].items()))
        row["exam"] = _exam(row["assessment"])
    _print_table(rows, ["id", "state", "trigger", "instances", "exam", "deliveries",
                        "updated_at", "study_uid", "error"])
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    reader = _reader(args)
    try:
        detail = reader.job(args.job_id)
    finally:
        reader.close()
    if detail is None:
        print(f"error: no job with id {args.job_id}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    print(f"job {detail['id']}  {detail['state']}  (trigger {detail['trigger']}, "
          f"attempts {detail['attempts']})")
    print(f"study {detail['study_uid']}")
    if detail["assessment"] is not None:
        assessment = StudyAssessment.from_json(detail["assessment"])
        print(f"assessment: {assessment.summary()} "
              f"({describe_thresholds(assessment.thresholds)})")
    if detail["error"]:
        print(f"error: {detail['error']}")
    print("\ninstances:")
    _print_table(detail["instances"], ["sop_instance_uid", "laterality", "view", "status",
                                       "skip_reason"])
    print("\ntimeline:")
    _print_table(detail["timeline"], ["at", "change", "stage", "duration_ms", "message"])
    if detail["deliveries"]:
        print("\ndeliveries:")
        _print_table(detail["deliveries"], ["destination", "object", "state", "attempts",
                                            "commitment", "last_error"])
    return 0


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    from mammo_scp.jobs.service import TransitionError, retry_job

    _, db = _existing_database(args)
    try:
        print(retry_job(db, args.job_id))
    except (LookupError, TransitionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_studies_list(args: argparse.Namespace) -> int:
    reader = _reader(args)
    try:
        rows = reader.studies()
    finally:
        reader.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, ["study_uid", "instances", "waiting", "jobs", "last_received_at"])
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from mammo_scp.dicom import NO_DELAY, SopClass, make_ae

    settings = _settings(args)
    ae = make_ae(settings.ae_title)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = args.timeout
    ae.add_requested_context(SopClass.VERIFICATION.value)
    assoc = ae.associate(args.host, args.port, ae_title=args.aet, evt_handlers=[NO_DELAY])
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no answer"
        print(f"C-ECHO {args.aet}@{args.host}:{args.port}: association failed ({why})")
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    if status and status.Status == 0x0000:
        print(f"C-ECHO {args.aet}@{args.host}:{args.port}: success")
        return 0
    code = f"0x{status.Status:04X}" if status and "Status" in status else "no response"
    print(f"C-ECHO {args.aet}@{args.host}:{args.port}: failed ({code})")
    return 1


def cmd_preview(args: argparse.Namespace) -> int:
    """Draw what a job sent: its images, the SEG masks it delivered, the boxes and scores."""
    settings, db = _existing_database(args)  # before the slow imports: it may refuse

    import numpy as np
    from pydicom import dcmread

    from mammo_scp.jobs.models import Job
    from mammo_scp.pipeline import FINDINGS_FILE, analysis_from_json
    from mammo_scp.preview import save_preview
    from mammo_scp.store.spool import Spool

    spool = Spool(settings.spool)
    with db.read_session() as session:
        job = session.get(Job, args.job_id)
        if job is None:
            print(f"error: no job with id {args.job_id}", file=sys.stderr)
            return 1
        images = {i.sop_instance_uid: spool.absolute(i.path) for i in job.instances}
        segs = [spool.absolute(r.path) for r in job.results if r.kind == "SEG"]
    findings_path = spool.results / str(args.job_id) / FINDINGS_FILE
    if not findings_path.is_file():
        print(f"error: job {args.job_id} has no findings (state {job.state.value}); only "
              "processed jobs can be previewed", file=sys.stderr)
        return 1
    masks = {}
    for path in segs:
        seg = dcmread(path)
        source_uid = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        masks[str(source_uid.ReferencedSOPInstanceUID)] = seg.pixel_array.astype(bool)
    datasets, analyses = [], []
    for item in json.loads(findings_path.read_text()):
        ds = dcmread(images[item["sop_instance_uid"]])
        empty = np.zeros((int(ds.Rows), int(ds.Columns)), dtype=bool)
        mask = masks.get(item["sop_instance_uid"], empty).reshape(empty.shape)
        datasets.append(ds)
        analyses.append(analysis_from_json(item, mask))
    save_preview(datasets, analyses, args.out)
    print(f"wrote {args.out}: {len(datasets)} image(s), "
          f"{sum(len(a.findings) for a in analyses)} finding(s)")
    return 0


def _shown(path: Path) -> Path:
    """``path`` relative to the current directory when it lies below it (for messages)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def cmd_assessment(args: argparse.Namespace) -> int:
    """Choose ``assessment_low`` on a validation evaluation by the rule of
    docs/assessment.md, print the table of categories, optionally write it into the
    detector's manifest."""
    from mammo_scp.assessment import (
        Thresholds,
        breasts_of,
        choose_low_threshold,
        exams_of,
        render_table,
        tabulate,
    )

    try:
        evaluation = json.loads(args.evaluation.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the evaluation {args.evaluation}: {exc}", file=sys.stderr)
        return 1
    images = evaluation.get("images")
    version = (evaluation.get("models") or {}).get("frcnn")
    if not images or version is None:
        print(f"error: {args.evaluation} lists no per-image scores ('images') or no detector "
              "version ('models'): write it again with 'mammo-scp models evaluate'",
              file=sys.stderr)
        return 1
    folder = args.write_manifest or args.model or _shown(
        _settings(args).models_dir / "frcnn" / version)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the detector manifest in {folder}: {exc}", file=sys.stderr)
        return 1
    if (manifest.get("name"), manifest.get("version")) != ("frcnn", version):
        print(f"error: {folder} holds {manifest.get('name')} {manifest.get('version')}, but "
              f"{args.evaluation} evaluated frcnn {version}", file=sys.stderr)
        return 1
    thresholds = dict(manifest.get("thresholds", {}))
    if "finding_score" not in thresholds:
        print(f"error: {folder}/manifest.json has no thresholds.finding_score", file=sys.stderr)
        return 1
    finding = float(thresholds["finding_score"])
    try:
        chosen = choose_low_threshold(images, args.sensitivity)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    low = min(chosen, finding)
    rows = tabulate(images, Thresholds(low=low, elevated=finding))
    mass_breasts = sum(b.mass for b in breasts_of(images))
    print(f"evaluation: {args.evaluation} ({evaluation.get('scope')}, {evaluation.get('look')}, "
          f"{evaluation.get('precision')}; models {evaluation.get('models')})")
    print(f"{len(images)} images, {len(breasts_of(images))} breasts ({mass_breasts} with a "
          f"mass), {len(exams_of(images))} exams")
    print(f"assessment_low = {low!r}: the highest score at or above which at least "
          f"{100 * args.sensitivity:g} % of the mass breasts score"
          + (f" ({chosen!r}, capped at the finding threshold)" if chosen > finding else ""))
    print(f"elevated from the finding threshold {finding!r} (frcnn {version})\n")
    print(render_table(rows))
    if args.write_manifest is None:
        print(f"\nto write it: mammo-scp assessment --evaluation {args.evaluation} "
              f"--sensitivity {args.sensitivity:g} --write-manifest {folder}")
        return 0
    rule = (evaluation.get("look"), evaluation.get("precision"))
    if rule != ("film", "fp32") or "validation" not in str(evaluation.get("scope")):
        print(f"error: not written: the rule takes an evaluation of the validation split on "
              f"film in fp32, this one is {evaluation.get('scope')!r}, {rule}", file=sys.stderr)
        return 1
    from mammo_scp.models.store import update_manifest

    update_manifest(folder, {"thresholds": thresholds | {"assessment_low": low}})
    print(f"\nwrote assessment_low = {low!r} into {folder / 'manifest.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="TOML configuration file (default: $MAMMO_SCP_CONFIG, else "
                             "/etc/mammo-scp/node.toml if it exists, else built-in defaults); "
                             "MAMMO_SCP_<KEY> variables override it")
    parser = argparse.ArgumentParser(prog="mammo-scp", parents=[common],
                                     description="DICOM mammography AI node")
    parser.add_argument("--version", action="version", version=f"mammo-scp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", parents=[common], help="run the SCP and workers").set_defaults(
        func=cmd_serve)
    sub.add_parser("work", parents=[common], help="run workers only (shared database and "
                   "spool)").set_defaults(func=cmd_work)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_command",
                                                                           required=True)
    db.add_parser("upgrade", parents=[common], help="apply migrations").set_defaults(
        func=cmd_db_upgrade)

    config = sub.add_parser("config", help="configuration").add_subparsers(
        dest="config_command", required=True)
    config.add_parser("show", parents=[common], help="print the effective configuration"
                      ).set_defaults(func=cmd_config_show)

    jobs = sub.add_parser("jobs", help="the job queue").add_subparsers(dest="jobs_command",
                                                                       required=True)
    listing = jobs.add_parser("list", parents=[common], help="list jobs")
    listing.add_argument("--state", choices=[s.value for s in JobState])
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--sort", choices=["id", "score"], default="id",
                         help="order: job id (default), or exam score, highest first")
    listing.set_defaults(func=cmd_jobs_list)
    show = jobs.add_parser("show", parents=[common], help="a job and its whole timeline")
    show.add_argument("job_id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_jobs_show)
    retry = jobs.add_parser("retry", parents=[common],
                            help="re-queue a failed job or re-send dead deliveries")
    retry.add_argument("job_id", type=int)
    retry.set_defaults(func=cmd_jobs_retry)

    studies = sub.add_parser("studies", help="received studies").add_subparsers(
        dest="studies_command", required=True)
    slist = studies.add_parser("list", parents=[common], help="list studies")
    slist.add_argument("--json", action="store_true")
    slist.set_defaults(func=cmd_studies_list)

    preview = sub.add_parser("preview", parents=[common],
                             help="draw a job's images with the SEG overlay, boxes and scores")
    preview.add_argument("job_id", type=int)
    preview.add_argument("--out", type=Path, required=True, help="PNG file to write")
    preview.set_defaults(func=cmd_preview)

    add_models_parser(sub)

    assessment = sub.add_parser(
        "assessment", parents=[common],
        help="choose the assessment's low threshold on a validation evaluation "
             "(docs/assessment.md) and print the share of each category")
    assessment.add_argument("--evaluation", type=Path, required=True, metavar="JSON",
                            help="evaluation.json of 'mammo-scp models evaluate'")
    assessment.add_argument("--sensitivity", type=float, default=0.9,
                            help="share of the mass breasts that must score at or above "
                                 "assessment_low (default 0.9)")
    where = assessment.add_mutually_exclusive_group()
    where.add_argument("--model", type=Path, metavar="DIR",
                       help="the detector whose finding threshold is 'elevated' (default: "
                            "models_dir/frcnn/<the evaluated version>)")
    where.add_argument("--write-manifest", type=Path, metavar="DIR",
                       help="write assessment_low into this detector's manifest thresholds "
                            "(models/frcnn/VERSION; the weights' sha256 is unchanged)")
    assessment.set_defaults(func=cmd_assessment)

    echo = sub.add_parser("echo", parents=[common], help="C-ECHO a peer")
    echo.add_argument("host")
    echo.add_argument("port", type=int)
    echo.add_argument("aet", help="the peer's AE title")
    echo.add_argument("--timeout", type=float, default=10.0)
    echo.set_defaults(func=cmd_echo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, NodeNotFound) as exc:
        print(f"mammo-scp: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
