"""Command line: parse arguments, call library functions, print. Nothing else lives here.

Training flags are generated from TrainConfig's fields, so the CLI and the library cannot drift.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from .core import data as data_mod
from .core import pretrained
from .core.config import PRESETS, RuntimeConfig, TrainConfig, config_from_dict, load_recipe, make_config
from .core.files import InputError, Interrupted
from .core.metrics import check_min_confidence, format_summary, predictions_from_probs, summarize
from .core.rundir import CHECKPOINT, CONFIG, SUBMISSION, Run
from .outputs.export import QUANTISATION_IMAGES, OnnxClassifier, check_onnx, export_onnx
from .outputs.submit import score, with_answers, write_submission
from .training.track import MlflowRun, params_of, tracked  # no torch: mlflow itself is imported when a run starts

# A command that needs torch (or OpenCV) imports it inside its own function, each such import marked
# so: `digitrec --help`, `data`, `score`, `verify` and the `--onnx` paths never load torch.


def _add_config_flags(parser: argparse.ArgumentParser, config_class, title: str) -> None:
    """One flag per field of a config dataclass (TrainConfig or RuntimeConfig)."""
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(config_class):
        if field.name == "preset":
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float, "str": str}[str(field.type)]
            group.add_argument(flag, dest=field.name, type=kind, default=None, metavar=field.name.upper())


def _given(args, config_class) -> dict:
    """The fields of `config_class` given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
            if f.name != "preset" and getattr(args, f.name, None) is not None}


def _overrides(args) -> dict:
    return _given(args, TrainConfig)


def _config_from_args(args) -> TrainConfig:
    """The preset's recipe (default: seed), or --recipe FILE's, with the flags given on top."""
    if getattr(args, "recipe", None):
        if args.preset:
            raise InputError("--recipe FILE holds the whole recipe, its preset too: drop --preset")
        return config_from_dict({**load_recipe(args.recipe).to_dict(), **_overrides(args)})
    return make_config(args.preset or "seed", **_overrides(args))


@contextlib.contextmanager
def _tracked(args, command: str, cfg: TrainConfig, runtime: dict, out: Path, active: bool = True):
    """The MLflow run of a tracked `train` or `run` (None when --track is not given, or off rank 0)."""
    if not getattr(args, "track", None) or not active:
        yield None
        return
    with tracked(args.track, out.name, params_of(cfg, runtime),
                 tags={"digitrec.command": command, "digitrec.run_dir": str(out.resolve())}) as mlrun:
        yield mlrun


def _set_up_runtime(rcfg: RuntimeConfig, env):
    """The entry point's process set-up, done once, and this process's decided runtime."""
    from .training.runtime import resolve, setup_process  # torch

    threads = setup_process(rcfg, env.local_world_size)
    return resolve(rcfg, env.rank, env.world_size, env.local_rank, env.local_world_size, threads)


def _add_data_flags(parser: argparse.ArgumentParser, role: str) -> None:
    """Where the images come from: a Kaggle CSV, a pair of IDX files (path or URL), or the built-in MNIST."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument(f"--{role}", metavar="FILE.csv", help=f"Kaggle-format {role} CSV")
    source.add_argument("--idx", nargs=2, metavar=("IMAGES", "LABELS"),
                        help="MNIST IDX files (plain or .gz), paths or URLs")
    source.add_argument("--dataset", choices=["mnist"], help="the built-in MNIST (default)")
    parser.add_argument("--sha256", nargs=2, metavar=("IMAGES_SHA", "LABELS_SHA"),
                        help="pinned sha256 of the two IDX files (required for URLs)")


def _load_data(args, role: str, mnist_split: str) -> data_mod.Digits:
    if getattr(args, role, None):
        return data_mod.read_kaggle_csv(getattr(args, role), "train")
    if args.idx:
        sha = args.sha256 or (None, None)
        return data_mod.read_idx_pair(args.idx[0], args.idx[1], sha[0], sha[1], args.cache_dir)
    return data_mod.load_dataset(args.dataset or "mnist", mnist_split, args.cache_dir)


def _print_config(cfg: TrainConfig, runtime: dict) -> None:
    print("config: " + json.dumps(cfg.to_dict()))
    print("runtime: " + json.dumps(runtime))


def _default_run_dir(preset: str) -> Path:
    return Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"


@contextlib.contextmanager
def _stop_on_signals(stop, repeat_kills: bool):
    """SIGINT and SIGTERM set `stop` (train.StopRequest): the loop finishes its step, checkpoints and
    raises Interrupted. With `repeat_kills`, a second signal ends the process at once (the default
    action; atomic writes leave every file whole). Under torchrun the launcher forwards the user's
    signal a second time and kills its workers itself after 30 s, so there repeats are ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    signums = (signal.SIGINT, signal.SIGTERM)

    def handler(signum, frame):
        if stop.signum:
            return
        stop.signum = signum
        if repeat_kills:
            for s in signums:
                signal.signal(s, signal.SIG_DFL)
        again = "; again to quit at once" if repeat_kills else ""
        os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step to write a checkpoint{again}\n".encode())

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _resume_command(args, out: Path, env) -> str:
    """The command that continues an interrupted `digitrec train`: its data flags, --out and --resume."""
    words = ["digitrec", "train", "--out", str(out), "--resume"]
    if args.train:
        words += ["--train", args.train]
    elif args.idx:
        words += ["--idx", *args.idx] + (["--sha256", *args.sha256] if args.sha256 else [])
    if args.cache_dir:
        words += ["--cache-dir", str(args.cache_dir)]
    if args.ensemble is not None:
        words += ["--ensemble"] + ([] if args.ensemble == "default" else [str(args.ensemble)])
    nproc = os.environ.get("DIGITREC_NPROC")  # set by `--nproc N`'s launcher (distributed.launch_local)
    if nproc:
        words += ["--nproc", nproc]
    elif env.under_launcher:  # the same torchrun command as before, with --resume
        words = ["torchrun", f"--nproc-per-node={env.local_world_size}", "...", "-m"] + words
    return shlex.join(words)


# ---------------------------------------------------------------------------------------------
# commands


def cmd_data_fetch(args) -> None:
    path = data_mod.fetch_mnist(args.cache_dir)
    print(f"MNIST cached at {path}")
    for split in ("train", "test"):
        print(data_mod.describe(data_mod.load_mnist(split, args.cache_dir)))


def cmd_data_export(args) -> None:
    for path in data_mod.export_csv(args.split, args.out, args.cache_dir):
        print(f"wrote {path}")


def cmd_data_check(args) -> None:
    print(data_mod.describe(data_mod.read_kaggle_csv(Path(args.file), args.kind)))


def cmd_train(args) -> None:
    """One process, one rank of a torchrun job, or (--nproc N) the launcher of N local workers."""
    from .training import distributed  # torch
    from .training.ensemble import DEFAULT_ENSEMBLE_SIZE, check_ensemble_start, train_ensemble  # torch
    from .training.train import StopRequest, check_start, fit  # torch

    env = distributed.DistEnv.from_environ()
    if args.nproc < 1:
        raise InputError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc > 1 and env.under_launcher:
        raise InputError("--nproc starts torchrun's workers itself; under torchrun, use --nproc-per-node")
    world_size = args.nproc if args.nproc > 1 else env.world_size
    if args.resume and not args.out:
        raise InputError("--resume needs --out RUN_DIR (the run to continue)")
    if world_size > 1 and not args.out:
        raise InputError("several processes need --out RUN_DIR (every rank must write the same run)")
    ensemble = args.ensemble is not None
    size = DEFAULT_ENSEMBLE_SIZE if args.ensemble == "default" else args.ensemble
    # after a worker died, torchrun --max-restarts restarts the group: it continues from the checkpoint
    restarted_from = Path(args.out) / (CONFIG if ensemble else CHECKPOINT) if args.out else None
    resume = args.resume or (env.restart_count > 0 and restarted_from is not None and restarted_from.is_file())
    if resume:
        # the saved recipe, with any flag given now; fit() refuses if that changes anything
        saved = Run(args.out).config() if Run(args.out).has(CONFIG) else {}
        cfg = config_from_dict({**saved, **_overrides(args)}) if saved else _config_from_args(args)
    else:
        cfg = _config_from_args(args)
    out = Path(args.out) if args.out else _default_run_dir(cfg.preset)
    runtime_cfg = RuntimeConfig(**_given(args, RuntimeConfig))  # a bad value fails here, before any process
    digits = _load_data(args, "train", "train")
    # bad input is found before any process group starts (an ensemble's folder is rank 0's to check)
    if ensemble and env.rank == 0:
        check_ensemble_start(cfg, out, size, resume)
    elif not ensemble:
        check_start(cfg, digits, out, resume, world_size)
    if args.nproc > 1:
        from torch.distributed.elastic.multiprocessing import SignalException  # torch
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # torch

        from .training.runtime import resolve_device  # torch

        resolve_device(runtime_cfg.device)  # a missing GPU is one line here, not one per worker
        try:  # torchrun's launcher forwards SIGINT/SIGTERM to the workers; rank 0 prints how to resume
            distributed.launch_local(args.nproc, distributed.strip_option(args.argv, "--nproc"))
        except SignalException as e:
            raise Interrupted(int(e.sigval), "") from None
        except ChildFailedError as e:
            # a worker was sent a signal: the group stopped at one step (exit 130/143); torchrun then sends the
            # workers still leaving its own SIGTERM (exit -15)
            stopped = {128 + signal.SIGINT, 128 + signal.SIGTERM}
            codes = {failure.exitcode for failure in e.failures.values()}
            if codes & stopped and codes <= stopped | {-signal.SIGINT, -signal.SIGTERM}:
                raise Interrupted(max(codes & stopped) - 128, "") from None
            raise SystemExit(f"error: {len(e.failures)} of {args.nproc} workers failed (their messages are above)")
        return

    rt = _set_up_runtime(runtime_cfg, env)
    if rt.is_main:
        _print_config(cfg, rt.describe())
    if rt.distributed:
        distributed.init(rt.device, env)
    try:
        with (_stop_on_signals(StopRequest(), repeat_kills=not env.under_launcher) as stop,
              _tracked(args, "train", cfg, rt.describe(), out, rt.is_main) as mlrun):
            if ensemble:
                metrics = train_ensemble(cfg, digits, out, size, resume=resume, quiet=args.quiet, runtime=rt, stop=stop)
            else:
                metrics = fit(cfg, digits, out, resume=resume, quiet=args.quiet, runtime=rt, stop=stop,
                              on_epoch=mlrun.epoch_hook(out) if mlrun else None)
            if mlrun:
                from .outputs.report import write_report  # torch

                write_report(out)  # the report goes with the model into the tracking store
                mlrun.log_run(out)
        distributed.barrier(rt)  # all ranks leave together: a gloo peer gone mid-exchange aborts the exit
    except Interrupted as e:
        distributed.barrier(rt)  # every rank stopped at the same step; they leave together
        if rt.is_main:
            print(f"interrupted: {e}\ninterrupted: resume with: {_resume_command(args, out, env)}", file=sys.stderr)
        raise Interrupted(e.signum, "") from None
    finally:
        distributed.shutdown()
    if not rt.is_main:
        return
    if "val_accuracy" in metrics:
        print(f"validation accuracy {100 * metrics['val_accuracy']:.3f}%")
    member_accuracies = [m["val_accuracy"] for m in metrics.get("members", []) if m["val_accuracy"] is not None]
    if member_accuracies:
        print("members' validation accuracy: " + ", ".join(f"{100 * a:.3f}%" for a in member_accuracies))
    print(f"training took {metrics['train_seconds']:.1f} s; run written to {out}")


def cmd_evaluate(args) -> None:
    from .nets.predict import evaluate_run  # torch

    if (args.run is None) == (args.pretrained is None):
        raise InputError("evaluate needs a run or --pretrained NAME (one of them)")
    if args.test:
        if not args.answers:
            raise InputError("--test needs --answers FILE.csv (the labels to score against)")
        digits = with_answers(data_mod.read_kaggle_csv(args.test, "test"), args.answers)
    else:
        digits = _load_data(args, "test", "test")
    if args.pretrained:  # scored, not saved: the package's folder is no run folder
        from .nets.predict import predict  # torch
        from .nets.weights import load_pretrained  # torch

        preds = predict(load_pretrained(args.pretrained)[0], digits, f"{args.name}-tta" if args.tta else args.name,
                        tta=args.tta)
        print(f"the bundled '{args.pretrained}' model:")
        print(format_summary(summarize(preds, args.top)))
        return
    preds = evaluate_run(args.run, digits, args.name, tta=args.tta)
    print(format_summary(summarize(preds, args.top)))
    print(f"\npredictions and evaluation written to {args.run}")


def cmd_submit(args) -> None:
    if args.onnx and args.tta:
        raise InputError("--tta needs the run's PyTorch model; it cannot be combined with --onnx")
    digits = data_mod.read_kaggle_csv(args.test_csv, "test")
    if args.onnx:  # onnxruntime only: torch is never imported
        preds = predictions_from_probs("submission", digits, OnnxClassifier(args.run).predict_probs(digits.images))
    else:
        from .nets.predict import evaluate_run  # torch

        preds = evaluate_run(args.run, digits, "submission", tta=args.tta)
    path = write_submission(preds, args.output)
    print(f"wrote {path} ({len(preds.ids)} rows)")


def _model_source(args) -> None:
    """Which model reads: a run (or, with --onnx, an ONNX file) given as the first argument, else the
    bundled one. The first argument is a model only when it is a run folder (it holds config.json) or,
    with --onnx, a file ending in .onnx; otherwise it is one of the images. Sets args.run (None for a
    bundled model), args.images and args.pretrained."""
    first = args.run
    is_model = first is not None and (
        (args.onnx and first.suffix == ".onnx") or (not args.onnx and Run(first).holds_run()))
    if args.pretrained and is_model:
        raise InputError(f"give a run or --pretrained {args.pretrained}, not both ({first} is a run)")
    if args.onnx and not is_model:
        raise InputError("--onnx needs an ONNX file first (made by `digitrec export RUN`)")
    if not is_model:
        if first is None and len(args.images) == 1 and Run(args.images[0]).holds_run():
            raise InputError(f"{args.images[0]} is a run: give the images to read after it")
        args.images = ([str(first)] if first is not None else []) + args.images
        args.run = None
        args.pretrained = args.pretrained or pretrained.DEFAULT


def _pretrained_classifier(name: str):
    """A bundled model's probabilities: through onnxruntime when it is installed (no torch: a photo is read in
    a fraction of torch's import time), else PyTorch."""
    try:
        classify = OnnxClassifier.pretrained(name, threads=1).predict_probs  # one image: one thread is quickest
        engine = "onnxruntime"
    except ModuleNotFoundError:  # no [onnx] extra
        from .nets.weights import load_pretrained  # torch
        from .nets.predict import predict_probs  # torch

        model, _, _ = load_pretrained(name)
        classify, engine = (lambda images: predict_probs(model, images)), "PyTorch"
    print(f"reading with {pretrained.describe(name)}, in {engine}", file=sys.stderr)
    return classify


def _classifier(args):
    """uint8 (N, 28, 28) -> probabilities (N, 10), from an ONNX file (no torch) or a run's weights."""
    if args.run is None:
        return _pretrained_classifier(args.pretrained)
    if args.onnx:
        return OnnxClassifier(args.run).predict_probs
    from .nets.weights import load_run_model  # torch
    from .nets.predict import predict_probs  # torch

    model, cfg, _ = load_run_model(args.run)
    return lambda images: predict_probs(model, images)


def cmd_predict(args) -> None:
    from .outputs.images import read_images, save_preprocessed  # OpenCV
    from .outputs.readings import format_readings  # OpenCV (images.Reading)

    _model_source(args)
    min_confidence = None if args.min_confidence is None else check_min_confidence(args.min_confidence)
    readings = read_images(args.images, _classifier(args), multi=args.multi, keep_steps=bool(args.show_preprocessed))
    if not readings:
        raise InputError(f"no image files in {', '.join(args.images)}")
    print(format_readings(readings, args.format, min_confidence))
    if args.show_preprocessed:
        print(f"preprocessed images: {len(save_preprocessed(readings, args.show_preprocessed))} "
              f"written to {args.show_preprocessed}", file=sys.stderr)
    failed = [r for r in readings if r.error]
    for r in failed:
        print(f"error: {r.error}", file=sys.stderr)
    if failed:
        raise InputError(f"{len(failed)} of {len(readings)} images could not be read")


def cmd_export(args) -> None:
    calibration = None
    if args.int8:  # training images only: the test images below are for the check
        calibration = data_mod.load_mnist("train", args.cache_dir).subset(
            slice(0, QUANTISATION_IMAGES), f"mnist:train[:{QUANTISATION_IMAGES}]")
    path = export_onnx(args.run, args.output, int8=args.int8, calibration=calibration)
    test = data_mod.load_mnist("test", args.cache_dir)
    check = check_onnx(args.run, path, test.images[:args.check_images])
    print(f"wrote {path}{' (int8)' if args.int8 else ''}; onnxruntime vs PyTorch on {check['n']} MNIST test "
          f"images: max |probability difference| {check['max_abs_prob_diff']:.2e}, "
          f"{check['disagreements']} different predictions")
    if not check["ok"]:
        path.unlink()
        raise ValueError(f"{path}: the ONNX model does not match the PyTorch one; file removed")


def cmd_ensemble(args) -> None:
    from .training.ensemble import combine_runs  # torch

    metrics = combine_runs(args.runs, args.output)
    print(f"{metrics['model']}, {metrics['parameters']:,} parameters, trained on {metrics['data']}: "
          f"written to {args.output}")


def cmd_score(args) -> None:
    result = score(args.submission, args.answers)
    print(f"accuracy {100 * result['accuracy']:.3f}% ({result['correct']} of {result['n']})")


def cmd_verify(args) -> None:
    """Every file of a run folder (and its members') checked against the digests in its manifest."""
    problems = Run(args.run).verify()
    for line in problems:
        print(line)
    unchecked = [line for line in problems if "nothing to check" in line]
    if len(problems) > len(unchecked):
        raise InputError(f"{args.run}: {len(problems) - len(unchecked)} file(s) do not match their digests")
    if not unchecked:
        print(f"{args.run}: every file matches its SHA-256 digest")


def cmd_serve(args) -> None:
    from .outputs.serve import serve  # torch

    if args.run is not None and args.pretrained:
        raise InputError(f"give a run or --pretrained {args.pretrained}, not both")
    if args.run is None:
        print(f"serving {pretrained.describe(args.pretrained or pretrained.DEFAULT)}", flush=True)
    serve(args.run, args.host, args.port, args.workers, pretrained=args.pretrained or pretrained.DEFAULT)


def cmd_report(args) -> None:
    from .outputs.report import write_report  # torch

    print(f"report: {write_report(args.run, args.top)}")


def cmd_compare(args) -> None:
    from .outputs.report import write_comparison  # torch

    print(f"comparison: {write_comparison(args.runs, args.output)}")


def cmd_run(args) -> None:
    """The main job: fetch MNIST, train, evaluate on the official test set, write a submission."""
    from .nets.predict import evaluate_run  # torch
    from .outputs.report import write_report  # torch
    from .training.train import fit  # torch

    from .training.distributed import DistEnv  # torch

    cfg = _config_from_args(args)
    rt = _set_up_runtime(RuntimeConfig(**_given(args, RuntimeConfig)), DistEnv())
    _print_config(cfg, rt.describe())
    out = Path(args.out) if args.out else _default_run_dir(cfg.preset)
    train = data_mod.load_mnist("train", args.cache_dir)
    test = data_mod.load_mnist("test", args.cache_dir)
    print(data_mod.describe(train))
    with _tracked(args, "run", cfg, rt.describe(), out) as mlrun:
        metrics = fit(cfg, train, out, quiet=args.quiet, runtime=rt, on_epoch=mlrun.epoch_hook(out) if mlrun else None)
        preds = evaluate_run(out, test, "test")
        summary = summarize(preds)
        print(format_summary(summary))
        submission = write_submission(preds, out / SUBMISSION)
        print(f"\ntraining: {metrics['train_seconds']:.1f} s for {cfg.epochs} epochs of preset '{cfg.preset}'")
        print(f"official MNIST test accuracy: {100 * summary['accuracy']:.2f}% ({summary['errors']} errors in {summary['n']})")
        print(f"run files: {out}/\nsubmission: {submission}")
        print(f"report: {write_report(out)}")
        if mlrun:
            mlrun.log_run(out)


STUDIES_ROOT = Path("studies")  # where a study's folder goes when no --out is given
STUDY_FILE = "study.json"  # in a study folder: the study's name, so `--show DIR` finds it


def _study_location(args) -> tuple[str, Path]:
    """The study's name and folder: --show DIR (a study folder) or NAME, or --study and --out."""
    if args.show:
        folder = Path(args.show)
        if (folder / STUDY_FILE).is_file():
            return json.loads((folder / STUDY_FILE).read_text())["study"], folder
        return args.show, Path(args.out) if args.out else STUDIES_ROOT / args.show
    name = args.study or (load_recipe(args.recipe).preset if args.recipe else args.preset or "seed")
    return name, Path(args.out) if args.out else STUDIES_ROOT / name


def cmd_tune(args) -> None:
    """Search the recipe's hyperparameters on the validation split, in one or several workers."""
    from .training import tune  # torch, optuna
    from .training.distributed import DistEnv, strip_option  # torch

    tune.optuna.logging.set_verbosity(tune.optuna.logging.WARNING)  # the trials' lines say what it would
    name, study_dir = _study_location(args)
    if args.show:
        storage = args.storage or f"sqlite:///{(study_dir / tune.STUDY_DB).resolve()}"
        if not args.storage and not (study_dir / tune.STUDY_DB).is_file():
            raise InputError(f"{args.show}: no study folder (no {study_dir / tune.STUDY_DB}); give --storage URL "
                             "for a study in a database server")
        opened = tune.load_study(name, storage)
        print(tune.format_study(opened))
        if study_dir.is_dir():
            for what, path in tune.write_results(opened, study_dir).items():
                print(f"{what.replace('_', ' ')}: {path}")
        return
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    base, note = tune.tuning_recipe(_config_from_args(args))
    space = tune.load_space(args.space) if args.space else tune.default_space(base)
    tune.check_space(space, base, set(_overrides(args)), args.space or "the default space")
    trials, seconds = tune.parse_budget(args.budget)
    study = tune.Study(name, study_dir, base, space, args.objective, trials, seconds, args.pruner, args.storage,
                       args.sampler_seed, args.heartbeat)
    runtime_cfg = RuntimeConfig(**_given(args, RuntimeConfig))
    digits = _load_data(args, "train", "train")
    worker = int(os.environ.get("DIGITREC_TUNE_WORKER", 0))
    if args.worker:  # one of --workers N's processes: trials only, the launcher prints the results
        env = DistEnv(local_rank=worker, local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        tune.run_worker(study, digits, _set_up_runtime(runtime_cfg, env), worker, args.quiet, bool(args.track))
        return

    if note:
        print(f"note: {note}")
    print("config: " + json.dumps(base.to_dict()))
    print(f"study {name!r}: validation {args.objective}, budget {args.budget}"
          f"{' trials' if trials else ''}, pruner {args.pruner}, {args.workers} worker(s) here; "
          f"storage {tune.safe_url(study.storage_url)}; trials in {study_dir}/")
    print("searching:\n" + "\n".join(f"  {p.describe()}" for p in space))
    opened = tune.open_study(study, digits)
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / STUDY_FILE).write_text(json.dumps({"study": name}) + "\n")
    study_run = None
    if args.track and "mlflow_run_id" not in opened.user_attrs:  # the study's run; its trials nest under it
        study_run = MlflowRun.start(f"study {name}", {"study": name, "objective": args.objective,
                                                       "budget": args.budget, "pruner": args.pruner}
                                    | {f"base.{k}": v for k, v in base.to_dict().items()}
                                    | {f"space.{p.field}": p.describe() for p in space},
                                    tags={"digitrec.command": "tune", "digitrec.study": name})
        opened.set_user_attr("mlflow_run_id", study_run.run_id)
    try:
        if args.workers > 1:
            codes = tune.launch_workers(args.workers, strip_option(args.argv, "--workers"))
        else:
            env = DistEnv(local_world_size=1)
            tune.run_worker(study, digits, _set_up_runtime(runtime_cfg, env), 0, args.quiet, bool(args.track))
            codes = [0]
    except BaseException:
        if study_run:
            study_run.end("KILLED")
        raise
    opened = tune.load_study(name, study.storage_url)
    print(tune.format_study(opened))
    written = tune.write_results(opened, study_dir)
    if study_run:
        best = tune.best_recipe(opened)
        if best:
            study_run.log_metrics({f"best_val_{args.objective}": opened.best_value})
        for path in written.values():
            study_run.client.log_artifact(study_run.run_id, str(path))
        study_run.end("FINISHED")
    if "best_recipe" in written:
        print(f"best recipe: {written['best_recipe']}\n  train it: digitrec train --recipe {written['best_recipe']}"
              f"{' --val-fraction 0' if note else ''}")
    for i, code in enumerate(codes):
        if code < 0:
            print(f"warning: worker {i} was killed by {signal.Signals(-code).name}; a trial it left running was "
                  "retried by another worker (heartbeat)", file=sys.stderr)
        elif code:
            print(f"warning: worker {i} exited with status {code} (its message is above)", file=sys.stderr)
    finished = tune.finished_trials(opened)
    if trials is not None and finished < trials:
        raise InputError(f"study {name!r} holds {finished} of {trials} finished trials: its workers stopped early")


# ---------------------------------------------------------------------------------------------


DESCRIPTION = """\
digitrec recognises handwritten digits. It trains convolutional networks on the built-in MNIST or
on Kaggle "Digit Recognizer" CSVs (the reference Keras recipe, exactly, or faster and stronger
presets), shows how well they do in an HTML report, writes Kaggle submissions, and reads digits
from photos and scans, on the command line, in a web page or through ONNX."""

EPILOG = """\
start here:
  digitrec run --preset fast        train on MNIST (about 15 seconds on 2 CPU cores), score it on
                                    the official test set, write a submission and a report
  digitrec predict digit.jpg        read a photo of a digit with the model that ships with digitrec
  digitrec predict RUN digit.jpg    ... or with a run you trained
  digitrec COMMAND --help           the options of one command

in Python or a notebook:
  import digitrec as dr
  clf = dr.DigitClassifier(preset="fast").fit("mnist")

more: README.md, and notebooks/digit_recognizer.py (the reference Kaggle notebook rebuilt on digitrec)"""

# Modules of the optional extras (pyproject.toml): a command that needs a missing one names its extra.
EXTRA_OF_MODULE = {"fastapi": "serve", "fastapi_offline": "serve", "uvicorn": "serve", "multipart": "serve",
                   "python_multipart": "serve", "orjson": "serve", "starlette": "serve", "pydantic": "serve",
                   "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx",
                   "optuna": "tune", "psycopg2": "tune", "mlflow": "track", "sqlalchemy": "track", "alembic": "track"}


class _Version(argparse.Action):
    """--version: the installed package's version, looked up only when asked (importlib.metadata is slow to import)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__  # the package metadata, read on demand

        print(f"digitrec {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digitrec", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    def command(name, func, help_text, parent=commands):
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        p.add_argument("--cache-dir", type=Path, default=None,
                       help="where the built-in MNIST is cached (or set DIGITREC_CACHE)")
        return p

    data = commands.add_parser("data", help="fetch, export and check data sets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    command("fetch", cmd_data_fetch, "fetch the built-in MNIST into the cache", data_commands)
    p = command("export", cmd_data_export, "write MNIST as Kaggle train.csv, test.csv, answers.csv", data_commands)
    p.add_argument("--split", choices=["official", "kaggle"], default="official")
    p.add_argument("--out", required=True, type=Path)
    p = command("check", cmd_data_check, "check a Kaggle CSV and describe it", data_commands)
    p.add_argument("file")
    p.add_argument("--kind", choices=["auto", "train", "test"], default="auto")

    for name, func, help_text in (("train", cmd_train, "train a model into a run directory"),
                                  ("run", cmd_run, "the main job: fetch MNIST, train, evaluate, write a submission")):
        p = command(name, func, help_text)
        p.add_argument("--preset", choices=list(PRESETS), help="the recipe to start from (default: seed, the reference)")
        p.add_argument("--recipe", metavar="FILE.json",
                       help="start from a recipe file instead of a preset (a run's config.json, a study's best_recipe.json)")
        p.add_argument("--out", help="run directory (default runs/<preset>-<timestamp>)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--track", choices=["mlflow"],
                       help="log the recipe, per-epoch metrics, scores and files to MLflow (MLFLOW_TRACKING_URI)")
        if name == "train":
            _add_data_flags(p, "train")
            p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
            p.add_argument("--ensemble", nargs="?", type=int, const="default", metavar="K",
                           help="train K members (seed and val_seed + 0..K-1) into OUT/member-<i>/ and combine "
                                "them into OUT; without K, train.DEFAULT_ENSEMBLE_SIZE members")
            p.add_argument("--nproc", type=int, default=1, metavar="N",
                           help="train in N processes on this machine (torchrun's launcher): DistributedDataParallel "
                                "with --batch-size the global batch, or with --ensemble one member per process")
        _add_config_flags(p, TrainConfig, "recipe (fields of TrainConfig in core/config.py)")
        _add_config_flags(p, RuntimeConfig, "runtime (fields of RuntimeConfig in core/config.py)")

    p = command("tune", cmd_tune, "search a recipe's hyperparameters on the validation split (Optuna)")
    p.add_argument("--preset", choices=list(PRESETS), help="the base recipe (default: seed, the reference)")
    p.add_argument("--recipe", metavar="FILE.json", help="the base recipe from a file instead of a preset")
    p.add_argument("--study", metavar="NAME", help="the study's name in its storage (default: the preset's name); "
                                                  "the same name and storage on another machine adds workers")
    p.add_argument("--out", help="the study folder, trials in trial-NNNN/ (default studies/<study>)")
    p.add_argument("--storage", metavar="URL", help="a database URL shared by workers and machines, e.g. "
                                                    "postgresql://user:password@host/db (default: OUT/study.db, SQLite)")
    p.add_argument("--space", metavar="FILE", help="the search space, YAML or JSON (default: the preset family's; "
                                                   "docs/tuning.md)")
    p.add_argument("--budget", default="20", help="finished trials the study holds at the end (20), or this "
                                                  "command's time (90s, 30m, 2h)")
    p.add_argument("--objective", choices=["accuracy", "nll"], default="accuracy",
                   help="validation accuracy (maximised) or validation loss (minimised)")
    p.add_argument("--pruner", choices=["median", "halving", "none"], default="median",
                   help="stop trials whose per-epoch validation score falls behind (Optuna's pruners)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="trial processes on this machine")
    p.add_argument("--sampler-seed", type=int, metavar="S", help="seed of the TPE sampler (worker i: S + i)")
    p.add_argument("--heartbeat", type=int, default=30, metavar="SECONDS",
                   help="a trial whose worker is silent for twice this is retried by another worker")
    p.add_argument("--show", metavar="STUDY", help="print a study's leaderboard and parameter importances "
                                                   "(a study folder, or a name with --storage) and write its best recipe")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.add_argument("--track", choices=["mlflow"], help="log the study and its trials (nested) to MLflow")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # set by --workers for its processes
    _add_data_flags(p, "train")
    _add_config_flags(p, TrainConfig, "fixed recipe fields (not searched)")
    _add_config_flags(p, RuntimeConfig, "runtime (fields of RuntimeConfig in core/config.py)")

    p = command("evaluate", cmd_evaluate, "evaluate a run (or a bundled model) on a labelled test set")
    p.add_argument("run", type=Path, nargs="?", help="run directory (or --pretrained NAME)")
    p.add_argument("--pretrained", choices=pretrained.NAMES, help="score a model that ships with digitrec instead")
    _add_data_flags(p, "test")
    p.add_argument("--answers", metavar="FILE.csv", help="ImageId,Label answer key for --test")
    p.add_argument("--name", default="test", help="name of the saved predictions (predictions_<name>.npz)")
    p.add_argument("--top", type=int, default=6, help="how many confident mistakes to list")
    p.add_argument("--tta", action="store_true",
                   help="average over small shifts and rotations (nets/augment.py: TTA_VIEWS); saved as <name>-tta")

    p = command("submit", cmd_submit, "write a Kaggle submission for a test CSV")
    p.add_argument("run", type=Path, help="run directory (with --onnx: an exported .onnx file)")
    p.add_argument("test_csv")
    p.add_argument("-o", "--output", default="submission.csv")
    p.add_argument("--onnx", action="store_true", help="RUN is an ONNX file; run it with onnxruntime, without torch")
    p.add_argument("--tta", action="store_true", help="average over small shifts and rotations (nets/augment.py: TTA_VIEWS)")

    p = command("predict", cmd_predict, "read digits from image files (PNG, JPEG, GIF, BMP, TIFF, WebP, Netpbm)")
    p.add_argument("run", type=Path, nargs="?", metavar="RUN",
                   help="run directory (with --onnx: an exported .onnx file); left out, or when the first argument "
                        "is not a run folder, a model that ships with digitrec reads the images")
    p.add_argument("images", nargs="+", metavar="IMAGE|DIR", help="image files, or folders of them")
    p.add_argument("--pretrained", choices=pretrained.NAMES,
                   help=f"read with this bundled model (default without a run: {pretrained.DEFAULT}; docs/models/)")
    p.add_argument("--multi", action="store_true", help="each image is a number: read every digit, left to right")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    # read as text and checked by metrics.check_min_confidence: one `error:` line, as in the API
    p.add_argument("--min-confidence", metavar="P",
                   help="answer a digit only when its probability is at least P (0..1); below it the digit is "
                        "'not sure': '?' in the number, with its best guess beside it (docs/calibration.md "
                        "recommends a P for forms)")
    p.add_argument("--show-preprocessed", type=Path, metavar="DIR", help="save the 28x28 images the model saw, and each preprocessing step's image")
    p.add_argument("--onnx", action="store_true", help="RUN is an ONNX file; run it with onnxruntime, without torch")

    p = command("export", cmd_export, "export a run's model for deployment, checked against PyTorch")
    p.add_argument("run", type=Path)
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("-o", "--output", type=Path, default=Path("model.onnx"))
    p.add_argument("--check-images", type=int, default=10_000, metavar="N",
                   help="compare with PyTorch on the first N MNIST test images")
    p.add_argument("--int8", action="store_true",
                   help="quantise to 8 bits (onnxruntime, calibrated on MNIST training images): faster on a "
                        "CPU; a few predictions in 10,000 change")

    p = command("ensemble", cmd_ensemble, "combine finished runs into one run that averages their probabilities")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="the ensemble's run directory")

    p = command("score", cmd_score, "score a submission against an answer key")
    p.add_argument("submission")
    p.add_argument("answers")

    p = command("verify", cmd_verify, "check a run folder's files against the SHA-256 digests in its manifest")
    p.add_argument("run", type=Path)

    p = command("serve", cmd_serve, "the draw-a-digit web page and JSON API for a run (or a bundled model)")
    p.add_argument("run", type=Path, nargs="?", help="run directory; left out, a model that ships with digitrec")
    p.add_argument("--pretrained", choices=pretrained.NAMES,
                   help=f"serve this bundled model (default without a run: {pretrained.DEFAULT})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (default 1; one per core answers the most requests)")

    p = command("report", cmd_report, "write RUN/report.html and RUN/figures/ from a run's saved files")
    p.add_argument("run", type=Path)
    p.add_argument("--top", type=int, default=24, help="how many confident mistakes to show")

    p = command("compare", cmd_compare, "one HTML page comparing the curves and scores of several runs")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN")
    p.add_argument("-o", "--output", type=Path, default=Path("compare.html"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # what `--nproc` hands to the workers
    try:
        args.func(args)
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        extra = EXTRA_OF_MODULE.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"error: digitrec {args.command} needs {e.name}, from the '{extra}' extra: "
              f"pip install 'digitrec[{extra}]'", file=sys.stderr)
        return 2
    except Interrupted as e:  # the training command printed how to resume
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
