"""The ``scalinglab`` command line. It sits on top of every layer; nothing imports it. Work
that combines layers lives here: at the end of a sweep (``cluster``), the fits and the report
(``analysis``), through the same function ``scalinglab report`` uses.

Exit status: 0 success; 1 a sweep ran but some trials failed or diverged; 2 a user error
(bad spec, path, table or storage), printed as one line without a traceback; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.errors import UserError
from analysis.records import EVALS, TRIALS, NCount, Role, Status

SWEEP_BOOTSTRAP = 200  # bootstrap resamples of the fits at the end of a sweep


def _sweep(args: argparse.Namespace) -> int:
    from cluster.runtime import RayStart, abandoned_on_error

    # Ray starts while this process imports torch and plans (a bad spec stops it again)
    ray_start = None if args.dry_run else RayStart(args.address, verbose=args.verbose)
    with abandoned_on_error(ray_start):
        from cluster.jobs import materialize_spec
        from cluster.sweep import prepare, run_sweep

        args.spec = materialize_spec(shipped_spec(args.spec))
    if args.dry_run:
        from experiments.planner import describe

        spec, trials, uri = prepare(args.spec, args.storage)
        print(describe(trials))
        if spec.budgets.kind == "adaptive":
            a = spec.budgets.adaptive
            print(f"adaptive: these are candidates; {a.seed_points} seed runs, then runs chosen {a.batch} at a time to "
                  f"narrow {a.target.describe()}, until its 95% interval is {a.stop_width:.2%} wide, "
                  f"{a.max_trials} runs" + (f" or {a.max_flops:.3g} FLOPs" if a.max_flops else ""))
        print(f"results would go to {uri}")
        return _dry_run_placement(trials, args.address, args.cluster_config)
    outcome = run_sweep(
        args.spec, storage=args.storage, address=args.address, resume=args.resume,
        retry_failed=args.retry_failed, verbose=args.verbose, max_concurrent=args.max_concurrent,
        tracking=args.tracking or (), ray_start=ray_start, designer=_designer,
    )
    print(summary_table(outcome.trials))
    if not (args.no_fit and args.no_report):
        from analysis.fit import summary
        from analysis.report import fit_and_report

        if not args.no_fit:
            print("\nscaling-law fits (95% bootstrap intervals; fits.json in the results folder):")
        done = fit_and_report(outcome.storage, refit=True, fit=not args.no_fit, save_fits=True,
                              report=not args.no_report, bootstrap=SWEEP_BOOTSTRAP, log=lambda msg: None)
        if not args.no_fit:
            print(summary(done.fits) if done.fits else f"no fit: {done.fit_error}")
        if done.report:
            print(f"\nreport: {done.report}")
    _finish_trackers(outcome)
    counts = outcome.trials["status"].value_counts().to_dict()
    print(f"{len(outcome.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; wall time {outcome.wall_s:.0f} s; tables in {outcome.storage}")
    return 0 if outcome.ok else 1


def _designer(candidates, settings):
    """An adaptive sweep's design (imported only for one: it brings the fitting code)."""
    from analysis.design import Design

    return Design.for_candidates(candidates, settings)


def _finish_trackers(outcome) -> None:
    """The sweep's files onto each tracker's parent run. A tracker that fails here loses
    nothing of the sweep (its tables and report are on disk): a warning, not an error."""
    from analysis.emergence_tables import EMERGENCE_FILE
    from analysis.records import SPEC_FILE
    from analysis.report import FITS_FILE, REPORT_FILE
    from analysis.store import ResultsStore
    from analysis.task_tables import TASKS_FILE

    if not outcome.trackers:
        return
    store = ResultsStore(outcome.storage)
    files = {name: store.read_bytes(name) for name in (SPEC_FILE, FITS_FILE, EMERGENCE_FILE, TASKS_FILE, REPORT_FILE)
             if store.exists(name)}
    for tracker in outcome.trackers:
        try:
            tracker.finish(files, outcome.ok)
        except Exception as exc:  # noqa: BLE001 (any tracker error; the results stand)
            print(f"warning: tracking: {type(tracker).__name__} could not log the sweep's files: {exc}",
                  file=sys.stderr)


def summary_table(trials) -> str:
    """Final loss (in the family's loss unit) by N (rows) and D (columns) of the fit points,
    then every trial that did not complete."""
    fit_points = trials[TRIALS.role].map(lambda r: Role(r).fit_point)
    done = trials[(trials[TRIALS.status] == Status.COMPLETED) & fit_points]
    lines = []
    if len(done):
        def by_n_and_d(column) -> str:  # a point's seeds: their mean
            table = done.pivot_table(index=TRIALS.n_params, columns=TRIALS.data_units, values=column, aggfunc="mean")
            table.index = [f"N={n:.3g}" for n in table.index]
            table.columns = [f"D={d:.3g}" for d in table.columns]
            return table.to_string(float_format=lambda v: f"{v:.4f}", na_rep="-")

        seeds = done.groupby([TRIALS.n_params, TRIALS.data_units]).size().max()
        lines.append(f"final held-out loss ({done[TRIALS.loss_unit].iloc[0]}) by model size N and "
                     f"{done[TRIALS.data_unit].iloc[0]} D" + (f" (mean of up to {seeds} seeds)" if seeds > 1 else "") + ":")
        lines.append(by_n_and_d(TRIALS.final_loss))
        if done[TRIALS.final_bpb].notna().any():  # text: the same in bits per byte, comparable across tokenizers
            lines.append(f"the same in bits per byte, comparable across tokenizers (bytes per token: "
                         f"{done[TRIALS.bytes_per_token].iloc[0]:.3g}):")
            lines.append(by_n_and_d(TRIALS.final_bpb))
    skipped = int((trials[TRIALS.status] == Status.SKIPPED).sum())
    if skipped:
        lines.append(f"{skipped} candidate(s) the adaptive design did not choose ({Status.SKIPPED}; "
                     "decisions.parquet says what it chose and why)")
    for row in trials[~trials[TRIALS.status].map(lambda s: Status(s).ok)].to_dict("records"):
        status = Status(row[TRIALS.status])
        why = row[TRIALS.error] or row[TRIALS.caveats] or (
            "continue with --resume" if not status.finished else "(no error recorded)")
        lines.append(f"{status}: {row[TRIALS.trial_id]}: {why}")
    return "\n".join(lines)


def shipped_spec(arg: str) -> str:
    """A spec path as given, or the name of a sweep that ships with scalinglab
    (``quickstart``: experiments/sweeps/quickstart.yaml of the installed package)."""
    if Path(arg).exists() or "/" in arg or arg.endswith((".yaml", ".yml")) or arg.startswith("env:"):
        return arg
    import experiments

    shipped = Path(experiments.__file__).parent / "sweeps" / f"{arg}.yaml"
    return str(shipped) if shipped.is_file() else arg


def _dry_run_placement(trials, address: str | None, cluster_config: str | None) -> int:
    """Print memory per worker and, against a cluster, whether each trial can ever run."""
    from cluster.placement import describe_placement, launcher_node_types, live_nodes, placement_problems

    nodes = None
    if address:
        from cluster.runtime import start_ray, stop_ray

        start_ray(address)
        try:
            nodes = live_nodes()
        finally:
            stop_ray()
    if cluster_config:
        nodes = (nodes or []) + launcher_node_types(cluster_config)
    problems = placement_problems(trials, nodes) if nodes else {}
    print(describe_placement(trials, nodes, problems))
    if problems:
        raise UserError(f"{len(problems)} of {len(trials)} trial(s) can never run on this cluster: "
                        + "; ".join(f"{tid}: {why}" for tid, why in list(problems.items())[:3]))
    return 0


def _fit(args: argparse.Namespace) -> int:
    import json

    from analysis.allocation import compare_approaches
    from analysis.fit import fit_laws, summary
    from analysis.results import jsonable

    results = fit_laws(args.source, laws=args.law, predict=args.predict, bootstrap=args.bootstrap,
                       seed=args.seed, n_col=args.n_col, d_col=args.d_col, c_col=args.c_col,
                       loss_col=args.loss_col, full_grid=args.full_grid, n_count=args.n_count, jobs=args.jobs)
    if args.format == "json":
        print(json.dumps({"fits": [r.to_json() for r in results], "approaches": jsonable(compare_approaches(results))}))
    else:
        print(summary(results))
    return 0


def _emergence(args: argparse.Namespace) -> int:
    import json

    from analysis.emergence import LEVEL
    from analysis.emergence_tables import EMERGENCE_FILE, detect_sweep, detect_table, summary, to_document
    from analysis.store import ResultsStore

    args.level = LEVEL if args.level is None else args.level
    if Path(args.source).is_dir():
        results, warnings, tests = detect_sweep(args.source, level=args.level, bootstrap=args.bootstrap, seed=args.seed)
    else:
        if not args.x_col:
            raise UserError("--x-col is required for a table: the scale column (e.g. flops)")
        results, warnings, tests = detect_table(
            args.source, x_col=args.x_col, y_cols=args.y_col or [], stderr_cols=args.stderr_col,
            n_items=args.n_items, chance=args.chance, kinds=args.metric_kind, answer_tokens=args.answer_tokens,
            group_col=args.group_col, loss_axis=args.loss_axis, level=args.level, bootstrap=args.bootstrap,
            seed=args.seed)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    document = to_document(results, level=args.level, tests=tests)
    if Path(args.source).is_dir():  # the report draws the flags from here
        ResultsStore(args.source).write_json(EMERGENCE_FILE, document)
    print(json.dumps(document) if args.format == "json" else summary(results))
    return 0


def _task(args: argparse.Namespace) -> int:
    import json

    from analysis.store import ResultsStore
    from analysis.task_tables import TASKS_FILE, Columns, parse_pair, run_tasks, summary

    columns = Columns(n=args.n_col, d=args.d_col, c=args.c_col, run=args.run_col, step=args.step_col,
                      loss=args.loss_col, acc=args.acc_col, pairs=[parse_pair(t) for t in args.task or []],
                      task=args.task_col)
    document = run_tasks(args.source, columns=columns, chance=args.chance, via=args.via_loss, predict=args.predict,
                         bootstrap=args.bootstrap, seed=args.seed, skip_early=args.skip_early,
                         sigmoid_in=args.sigmoid_in)
    if Path(args.source).is_dir():  # the report draws the panel from here
        ResultsStore(args.source).write_json(TASKS_FILE, document)
    print(json.dumps(document) if args.format == "json" else summary(document))
    return 0


def _submit(args: argparse.Namespace) -> int:
    from cluster.jobs import submit

    return submit(args.spec, address=args.address, storage=args.storage, wait=not args.no_wait,
                  resume=args.resume, max_concurrent=args.max_concurrent, verbose=args.verbose,
                  tracking=args.tracking or ())


def _jobs(args: argparse.Namespace) -> int:
    from cluster.jobs import jobs_command

    return jobs_command(args.action, args.job_id, address=args.address, follow_logs=args.follow)


def _report(args: argparse.Namespace) -> int:
    from analysis.report import fit_and_report

    fit_and_report(args.results, out=args.output, predict=args.predict, bootstrap=args.bootstrap, seed=args.seed)
    return 0


def law_names() -> list[str]:
    from analysis.fit import LAW_NAMES

    return list(LAW_NAMES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scalinglab", description="Scaling-law sweeps on Ray + DeepSpeed, fits and reports."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_sweep_parser, _submit_parser, _jobs_parser, _fit_parser, _emergence_parser, _task_parser,
                _report_parser):
        add(sub)
    return parser


def _sweep_parser(sub) -> None:
    sweep = sub.add_parser("sweep", help="run a sweep spec (embedded local Ray, or --address)")
    sweep.add_argument("spec", help="sweep spec YAML, e.g. experiments/sweeps/quickstart.yaml")
    sweep.add_argument("--address", help="existing Ray cluster: ray://HOST:10001, HOST:6379 or auto")
    sweep.add_argument("--storage", help="results folder or URI (default: results/<sweep name>)")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    sweep.add_argument("--retry-failed", action="store_true", help="with --resume: run failed trials again")
    sweep.add_argument("--dry-run", action="store_true", help="print the plan (N, D, C, resources, memory per "
                       "worker) and exit; with --address or --cluster-config, also whether each trial can ever run")
    sweep.add_argument("--cluster-config", help="with --dry-run: a Ray cluster-launcher config (ray_config.yaml) "
                       "whose node types the placement check counts")
    sweep.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    sweep.add_argument("--verbose", action="store_true", help="show Ray's and DeepSpeed's own logs")
    sweep.add_argument("--no-fit", action="store_true", help="skip the scaling-law fit at the end")
    sweep.add_argument("--no-report", action="store_true", help="skip the HTML report at the end")
    _tracking_argument(sweep)
    sweep.set_defaults(func=_sweep)


def _tracking_argument(parser) -> None:
    parser.add_argument("--tracking", action="append", metavar="KIND[=VALUE]",
                        help="log every trial to a tracker, on top of the spec's tracking block (repeatable): "
                        "mlflow[=URI], tensorboard[=DIR], wandb[=PROJECT] (docs/tracking.md)")


def _submit_parser(sub) -> None:
    submit = sub.add_parser("submit", help="submit a sweep to a Ray cluster as a Ray Job")
    submit.add_argument("spec", help="sweep spec YAML (checked here before anything is submitted)")
    submit.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: "
                        "$RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)")
    submit.add_argument("--storage", help="results: an object-store URI or an absolute path on a filesystem "
                        "every node mounts (default: the spec's storage)")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return; do not follow the logs")
    submit.add_argument("--resume", action="store_true", help="continue an interrupted sweep in the same storage")
    submit.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    submit.add_argument("--verbose", action="store_true", help="show Ray's and DeepSpeed's own logs")
    _tracking_argument(submit)
    submit.set_defaults(func=_submit)


def _jobs_parser(sub) -> None:
    jobs = sub.add_parser("jobs", help="a submitted sweep: status, logs or stop")
    jobs.add_argument("action", choices=["status", "logs", "stop"])
    jobs.add_argument("job_id", help="the id `scalinglab submit` printed (raysubmit_…)")
    jobs.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265")
    jobs.add_argument("--follow", action="store_true", help="logs: keep printing until the job ends")
    jobs.set_defaults(func=_jobs)


def _fit_parser(sub) -> None:
    fit = sub.add_parser("fit", help="fit scaling laws to a results folder or a CSV/Parquet table")
    fit.add_argument("source", help="a sweep's results folder, or a .csv/.parquet table")
    fit.add_argument("--law", action="append", metavar="LAW",
                     help=f"one of {', '.join(law_names())} (repeatable; default: every law the data can identify)")
    fit.add_argument("--predict", action="append", help="a target: N=1e9,D=2e10 or C=1e21 (repeatable)")
    fit.add_argument("--bootstrap", type=int, default=1000, help="resamples for intervals (0: off)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--jobs", type=int, help="processes for the bootstrap (default: one per core)")
    fit.add_argument("--n-count", choices=[c.value for c in NCount], default=NCount.SCALING.value,
                     help="N: the family's scaling count (n_params: non-embedding for the transformer) or every "
                     "parameter (total_params)")
    fit.add_argument("--n-col", default=TRIALS.n_params.name, help="N's column (wins over --n-count)")
    fit.add_argument("--d-col", default=TRIALS.data_units.name)
    fit.add_argument("--c-col", default=TRIALS.flops.name)
    fit.add_argument("--loss-col", default=TRIALS.final_loss.name)
    fit.add_argument("--full-grid", action="store_true",
                     help="run L-BFGS from every grid start (slow): starts_at_best over the whole grid")
    fit.add_argument("--format", choices=["text", "json"], default="text")
    fit.set_defaults(func=_fit)


def _emergence_parser(sub) -> None:
    em = sub.add_parser("emergence", help="flag capability thresholds: a sweep's folder or a table of model results")
    em.add_argument("source", help="a sweep's results folder, or a .csv/.parquet table (one row per model)")
    em.add_argument("--x-col", help="table: the scale column (N, D, C, or a loss with --loss-axis)")
    em.add_argument("--y-col", action="append", help="table: a metric column (repeatable)")
    em.add_argument("--stderr-col", action="append", help="standard-error column: once, or once per --y-col")
    em.add_argument("--n-items", action="append", type=float, help="items per evaluation (binomial errors): "
                    "once, or once per --y-col")
    em.add_argument("--chance", action="append", type=float, help="chance level: once, or once per --y-col")
    em.add_argument("--metric-kind", action="append", choices=["discontinuous", "continuous"],
                    help="once, or once per --y-col (default: from the name; exact_match/em/acc/accuracy are discontinuous)")
    em.add_argument("--answer-tokens", action="append", type=float,
                    help="tokens per answer of an exact-match metric, for the mirage check against the same task's "
                         "TASK/token_accuracy or TASK/logprob: once, or once per --y-col")
    em.add_argument("--group-col", help="table: analyse each value of this column apart (e.g. family)")
    em.add_argument("--level", type=float,
                    help="false-alarm level of the step test per series, before dividing it among the series tested "
                         "at once (default: analysis.emergence.LEVEL; docs/emergence.md has the rates at other levels)")
    em.add_argument("--loss-axis", action="store_true", help="the x column is a loss: lower is more scale, linear axis")
    em.add_argument("--bootstrap", type=int, default=200, help="refits for the transition's intervals")
    em.add_argument("--seed", type=int, default=0)
    em.add_argument("--format", choices=["text", "json"], default="text")
    em.set_defaults(func=_emergence)


def _task_parser(sub) -> None:
    from analysis.task import SKIP_EARLY, SigmoidAxis

    task = sub.add_parser("task", help="predict a larger model's task accuracy from a ladder: (N, D) -> task loss -> "
                          "accuracy, with intervals (a sweep's folder or a CSV/Parquet table of checkpoints)")
    task.add_argument("source", help="a sweep's results folder (every probe task), or a .csv/.parquet table with "
                      "one row per checkpoint")
    task.add_argument("--predict", action="append", help="a target: N=1e9,D=2e10, or C=1e21 split compute-optimally "
                      "by step 1's Chinchilla law (repeatable)")
    task.add_argument("--via-loss", metavar="COL", help="step 1 through a general loss (loss-to-loss): its Chinchilla "
                      "law, then task loss as a shifted power law of it (a sweep: an evals metric, e.g. loss)")
    task.add_argument("--chance", action="append", type=float, help="table: the accuracy's floor (chance level): "
                      "once, or once per --task (default: fitted; a sweep's probes record theirs)")
    task.add_argument("--skip-early", type=float, default=SKIP_EARLY, help="step 2 drops each run's checkpoints "
                      "before this fraction of its final D (default %(default)s)")
    task.add_argument("--sigmoid-in", choices=SigmoidAxis.values(), default=SigmoidAxis.LOSS.value,
                      help="step 2's sigmoid of the task loss (Bhagia et al.) or of its log (reaches its ceiling only "
                      "as the loss goes to 0: exact match on a mastered task); docs/tasks.md")
    task.add_argument("--n-col", default=TRIALS.n_params.name)
    task.add_argument("--d-col", default=TRIALS.data_units.name, help="D trained so far at the checkpoint")
    task.add_argument("--c-col", default=TRIALS.flops.name, help="FLOPs so far (default %(default)s; absent: 6·N·D)")
    task.add_argument("--run-col", default=TRIALS.trial_id.name, help="the run a checkpoint belongs to")
    task.add_argument("--step-col", default=EVALS.step.name, help="orders a run's checkpoints")
    task.add_argument("--loss-col", help="table: the task loss (e.g. bits per byte of the correct answer)")
    task.add_argument("--acc-col", help="table: the accuracy, in [0, 1]")
    task.add_argument("--task", action="append", metavar="LOSS_COL:ACC_COL", help="table: one task's columns "
                      "(repeatable)")
    task.add_argument("--task-col", help="table: a long table's task name column (with --loss-col, --acc-col)")
    task.add_argument("--bootstrap", type=int, default=1000, help="resamples of the runs for intervals (0: off)")
    task.add_argument("--seed", type=int, default=0)
    task.add_argument("--format", choices=["text", "json"], default="text")
    task.set_defaults(func=_task)


def _report_parser(sub) -> None:
    report = sub.add_parser("report", help="write a sweep's self-contained HTML report (plotly, offline)")
    report.add_argument("results", help="a sweep's results folder (holding trials.parquet)")
    report.add_argument("-o", "--output", help="the HTML file to write (default: RESULTS/report.html)")
    report.add_argument("--predict", action="append", help="a target to extrapolate to: N=1e9,D=2e10 or "
                        "C=1e21 (repeatable); drawn with its interval, beyond-the-data range shaded")
    report.add_argument("--bootstrap", type=int, default=200, help="resamples for the fits' bands (0: off)")
    report.add_argument("--seed", type=int, default=0)
    report.set_defaults(func=_report)


def check_not_shadowed(cwd: Path | None = None) -> None:
    """scalinglab's packages have generic names. A folder ``models/`` (or ``analysis/``, …) in
    the working directory would replace ours without a word: in this process when it runs as
    ``python -m``, and in every Ray worker, which puts the driver's working directory first on
    its path. Refuse to run then, naming the folder."""
    import importlib.util

    from cluster.runtime import PACKAGES

    home = Path(__file__).resolve().parent.parent  # where our packages are
    cwd = (cwd or Path.cwd()).resolve()
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        found = Path(spec.origin).resolve().parent.parent if spec and spec.origin else None
        local = cwd / name
        clash = (local / "__init__.py").is_file() or local.with_suffix(".py").is_file()
        if found != home or (clash and cwd != home):
            where = local if clash or local.is_dir() else found  # a bare folder: a namespace package
            raise UserError(f"a package named {name!r} at {where} shadows scalinglab's own ({home / name}); "
                            "run scalinglab from another directory, or rename that folder")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_not_shadowed()
        return args.func(args)
    except UserError as exc:
        print(f"scalinglab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scalinglab: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
