"""Command line: flags -> config -> one call into the library.

python launch.py --experiment commercial [--model NAME] [--workdir DIR] [--set KEY=VALUE ...] [--fresh]
python launch.py --experiment commercial --sweep paper_table     # every trial, then results.md / .csv / .png
python launch.py --experiment commercial --model mian --plot gim  # the paper's Figure 6
python launch.py --experiment commercial --eval | --predict PATH --out FILE | --export DIR
python launch.py --experiment commercial:tiny --print-config     # every field, its value and description
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

# Exit codes and the errors behind them: mian_jax/errors.py (README "When things go wrong").
# The package is imported inside the functions below, each mode taking what it uses: --help, argument
# mistakes and --print-config answer in ~1 s, before the ~3 s that the trainer's JAX / Flax / Orbax imports take
# (measured on 2 cores); the rest of the package imports at module top.


def _parser(experiment_names: list[str], model_names: list[str], sweep_names: list[str]) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="launch.py",
    description="Train and evaluate MIAN and CTR baselines.",
    epilog=f"experiments: {', '.join(experiment_names)} (NAME:tiny for a seconds-long run)\n"
    f"models: {', '.join(model_names)}\nsweeps: {', '.join(sweep_names)}",
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--experiment", required=True, help="experiment name (experiments/NAME.py), optionally NAME:VARIANT")
  p.add_argument("--model", help="model name (overrides model.name; any case)")
  p.add_argument(
    "--workdir", help="run directory (default runs/<experiment>[-<variant>]/<model>, e.g. runs/commercial-tiny/mian)"
  )
  p.add_argument(
    "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. train.batch_size=512"
  )
  p.add_argument(
    "--print-config",
    action="store_true",
    help="print the resolved config (every field, its value and description) and exit",
  )
  p.add_argument(
    "--fresh",
    action="store_true",
    help="start over: the workdir's earlier checkpoints and logs are moved to "
    "<workdir>/previous-<time>/ (nothing is deleted)",
  )
  p.add_argument(
    "--sweep",
    metavar="NAME",
    help="run a sweep (experiments/sweeps.py): one process per trial, in parallel on disjoint device groups "
    "(sweep.devices_per_trial), then results.csv / .md / .png",
  )
  p.add_argument(
    "--plot", choices=["gim"], help="draw from the run's best checkpoint instead of training (gim: Figure 6)"
  )
  p.add_argument(
    "--eval", action="store_true", help="evaluate the run's best checkpoint on the test split (no training)"
  )
  p.add_argument(
    "--predict",
    metavar="PATH",
    help="score every record of PATH (a data set folder, or files in the "
    "experiment's layout) with the best checkpoint, in input order; "
    "needs --out",
  )
  p.add_argument(
    "--out",
    metavar="FILE",
    help="--predict: the CSV to write (row, user, probability); an existing FILE is "
    "replaced only when it is an earlier --predict output. --plot: the "
    "PNG to write (default <workdir>/gim_attention.png)",
  )
  p.add_argument(
    "--export",
    metavar="DIR",
    help="write the best checkpoint's inference function (jax.export, any "
    "batch size) with its schema and vocabularies to DIR (mian_jax.serving)",
  )
  p.add_argument(
    "--coordinator",
    metavar="HOST:PORT",
    help="multi-host: process 0's address (jax.distributed); without it, JAX_COORDINATOR_ADDRESS / "
    "JAX_NUM_PROCESSES / JAX_PROCESS_ID or a Slurm, Open MPI or Cloud TPU cluster is used when present",
  )
  p.add_argument("--num-processes", type=int, help="multi-host: how many processes (one per host)")
  p.add_argument("--process-id", type=int, help="multi-host: this process's index, 0 .. num-processes-1")
  return p


def main(argv: list[str] | None = None, restore_signals: bool = True) -> int:
  """Runs the command; returns its exit code. Every error the user can act on (mian_jax.errors.Error)
  becomes one `error:` line and that error's exit code; SIGTERM / Ctrl-C in any phase, exit 75. At the
  end the previous signal handlers come back (a caller in the same process), or, as a script
  (`restore_signals=False`), signals are ignored: the work is done and the process exits with its code."""
  from mian_jax import errors, interrupts, xla_env

  xla_env.apply()  # before JAX starts: XLA reads XLA_FLAGS once
  previous = interrupts.install()  # from here on SIGTERM / Ctrl-C stop every phase cleanly (exit 75)
  try:
    code = _main(argv)
    interrupts.check()  # a signal whose exception was dropped on the way (interrupts._pending)
    return code
  except interrupts.Interrupted as e:
    interrupts.delivered()
    sys.stdout.flush()
    print(
      f"error: stopped by {e.name} while {e.during}; finished data shards and checkpoints are kept (unfinished "
      f"ones are redone); run the same command again to go on",
      file=sys.stderr,
      flush=True,
    )
    return errors.EXIT_PREEMPTED
  except errors.Error as e:
    if getattr(e, "exit_at_once", False):
      # Out at once: a failed checkpoint writer's pending futures would otherwise print tracebacks at
      # shutdown after this line. Nothing is left to save (the complete checkpoints are on disk).
      sys.stdout.flush()
      print(f"error: {e}", file=sys.__stderr__, flush=True)
      os._exit(e.exit_code)
    print(f"error: {e}", file=sys.stderr)
    return e.exit_code
  except OSError as e:  # e.g. a full disk or a read-only directory while writing logs or results
    where = f" {e.filename}" if e.filename else ""
    if e.errno in (errno.ENOTDIR, errno.EEXIST):  # a file where the path needs a folder (--workdir FILE/sub)
      fix = "a part of that path is a file, not a folder: choose another path (--workdir, --out, data.dir)"
    elif e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
      fix = "free space, then rerun (training resumes from the last complete checkpoint)"
    else:
      fix = (
        "fix the directory's permissions or free space, then rerun (training resumes from the last complete checkpoint)"
      )
    print(f"error: cannot write{where}: {e.strerror or e}; {fix}", file=sys.stderr)
    return errors.EXIT_ERROR
  finally:
    interrupts.restore(previous) if restore_signals else interrupts.ignore()


def _main(argv: list[str] | None) -> int:
  import absl.logging

  absl.logging.set_verbosity(absl.logging.ERROR)  # Orbax's info / warning chatter
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # a failed checkpoint write's stray futures
  import experiments
  from experiments import sweeps
  from mian_jax import config_fields, data, distributed, interrupts, models, progress
  from mian_jax.config import ConfigError, apply_overrides, did_you_mean
  from mian_jax.train import workdir as workdir_lib

  args = _parser(experiments.names(), models.names(), sweeps.names()).parse_args(argv)
  try:
    config = experiments.get_config(args.experiment)
  except KeyError:
    name = args.experiment.partition(":")[0]
    raise ConfigError(
      f"--experiment {args.experiment}: unknown{did_you_mean(name, experiments.names())}; valid: "
      f"{', '.join(experiments.names())}"
    ) from None
  except ValueError as e:
    raise ConfigError(f"--experiment {args.experiment}: {e}") from None
  if args.model:
    config.model.name = args.model
  apply_overrides(config, args.set)
  data.check_overrides(config.data, [a for a in args.set if a.strip().startswith("data.")])
  known = {n.lower(): n for n in models.names()}
  if config.model.name.lower() not in known:
    raise ConfigError(
      f"model {config.model.name!r} is unknown{did_you_mean(config.model.name, models.names())}; "
      f"valid: {', '.join(models.names())}"
    )
  config.model.name = known[config.model.name.lower()]  # MIAN, DeepFM: any case
  note = experiments.note(args.experiment)  # a tiny variant's first line
  if args.print_config:
    try:
      print("\n".join(filter(None, [note, config_fields.render(config)])), flush=True)
    except BrokenPipeError:  # `| head`: the reader has what it wanted; nothing more is written at exit
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
  modes = [
    flag
    for flag, on in (
      ("--sweep", args.sweep),
      ("--plot", args.plot),
      ("--eval", args.eval),
      ("--predict", args.predict),
      ("--export", args.export),
    )
    if on
  ]
  if len(modes) > 1:
    raise ConfigError(f"{' and '.join(modes)} cannot be combined; give one")
  if args.predict and not args.out:
    raise ConfigError("--predict PATH needs --out FILE (the CSV of probabilities to write)")
  if args.sweep:
    if note:
      print(note, flush=True)
    return _sweep(args, config, sweeps)
  workdir = args.workdir or workdir_lib.default(config)
  try:
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if note:
    progress.say(note)

  from mian_jax import predict
  from mian_jax.train import loop, report

  if args.plot == "gim":
    from pathlib import Path

    from mian_jax import plots
    from mian_jax.errors import RunError

    target = Path(args.out or f"{workdir}/gim_attention.png")
    with interrupts.phase("drawing the GIM weights (nothing is written until they are drawn)"):
      weights, columns = predict.gim_weights(config, workdir)
      try:
        path = plots.gim_heatmap(weights, target, columns)
      except OSError as e:  # a read-only workdir, a full disk: nothing of the run is at stake
        raise RunError(
          f"cannot write {target}: {e.strerror or e}; give --out FILE in a folder you can "
          f"write (the checkpoints were only read)"
        ) from None
    print(f"wrote {path}")
  elif args.eval:
    with interrupts.phase("evaluating (nothing is written)"):
      step, m = predict.evaluate_best(config, workdir)
    f = report.fmt
    print(f"final test auc={f(m['auc'])} gauc={f(m['gauc'])} logloss={f(m['logloss'])} (checkpoint step {step})")
  elif args.predict:
    with interrupts.phase(f"predicting ({args.out} is written only when complete)"):
      n = predict.predict(config, workdir, args.predict, args.out)
    print(f"wrote {n:,} probabilities to {args.out}")
  elif args.export:
    from mian_jax import export

    with interrupts.phase(f"exporting ({args.export} is written only when complete)"):
      print(f"exporting the best checkpoint of {workdir} to {args.export}", flush=True)
      out = export.export(config, workdir, args.export)
    print(f"exported to {out}")
  else:
    loop.train_and_evaluate(config, workdir, fresh=args.fresh)
  return 0


def _sweep(args, config, sweeps) -> int:
  """Runs the sweep's trials (each its own launch.py process, in parallel on disjoint device groups), then
  prints and writes the summary."""
  import copy
  from pathlib import Path

  from mian_jax import errors, sweep
  from mian_jax.config import ConfigError, apply_overrides, did_you_mean
  from mian_jax.train import workdir as workdir_lib

  try:
    trials = sweeps.trials(args.sweep, config.sweep.seeds)
  except KeyError:
    raise ConfigError(
      f"--sweep {args.sweep}: unknown{did_you_mean(args.sweep, sweeps.names())}; valid: {', '.join(sweeps.names())}"
    ) from None
  if args.model or args.plot:
    raise ConfigError("--sweep chooses the models itself; drop --model / --plot (use --set for common overrides)")
  if args.coordinator:
    raise ConfigError("--sweep runs on one host; run a multi-host trial as a plain launch.py run")
  for tid, overrides in zip(sweep.trial_ids(trials), trials):  # every trial's config is valid before any runs
    try:
      apply_overrides(copy.deepcopy(config), [f"{k}={v}" for k, v in overrides.items()])  # validates
    except ConfigError as e:
      raise ConfigError(f"--sweep {args.sweep}, trial {tid}: {e}") from None
  root = Path(args.workdir or workdir_lib.default_sweep_root(config, args.sweep))
  try:
    rows = sweep.run(args.experiment, trials, root, args.set, config.sweep.devices_per_trial, fresh=args.fresh)
  except ValueError as e:  # device groups that cannot be formed, a trial listed twice
    if isinstance(e, errors.Error):
      raise
    raise ConfigError(str(e)) from None
  print((root / "results.md").read_text())
  print(f"wrote {root / 'results.csv'}, {root / 'results.md'} and {root / 'results.png'}")
  if any(r["status"] == "interrupted" for r in rows):
    print("interrupted: run the same command again to resume", flush=True)
    return errors.EXIT_PREEMPTED
  return errors.EXIT_OK if all(r["status"] == "ok" for r in rows) else errors.EXIT_TRIALS_FAILED


if __name__ == "__main__":
  sys.exit(main(restore_signals=False))
