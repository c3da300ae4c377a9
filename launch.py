"""Command line: flags -> config -> one call into the library.

  python launch.py --experiment commercial [--model NAME] [--workdir DIR] [--set KEY=VALUE ...] [--fresh]
"""

from __future__ import annotations

import argparse
import sys


def _parser(experiment_names: list[str], model_names: list[str]) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="launch.py", description="Train and evaluate MIAN and CTR baselines.",
      epilog=f"experiments: {', '.join(experiment_names)} (NAME:tiny for a seconds-long run)\n"
             f"models: {', '.join(model_names)}",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--experiment", required=True, help="experiment name (experiments/NAME.py), optionally NAME:VARIANT")
  p.add_argument("--model", help="model name (overrides model.name)")
  p.add_argument("--workdir", help="run directory (default runs/<experiment>/<model>)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. train.batch_size=512")
  p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints in the workdir and start over")
  return p


def main(argv: list[str] | None = None) -> int:
  import absl.logging

  absl.logging.set_verbosity(absl.logging.ERROR)  # Orbax's info / warning chatter
  import experiments
  from mian_jax import models
  from mian_jax.config import ConfigError, apply_overrides

  args = _parser(experiments.names(), models.names()).parse_args(argv)
  try:
    try:
      config = experiments.get_config(args.experiment)
    except KeyError:
      raise ConfigError(f"--experiment {args.experiment}: unknown; valid: {', '.join(experiments.names())}") from None
    except ValueError as e:
      raise ConfigError(f"--experiment {args.experiment}: {e}") from None
    if args.model:
      config.model.name = args.model
    apply_overrides(config, args.set)
    if config.model.name not in models.names():
      raise ConfigError(f"model {config.model.name!r} is unknown; valid: {', '.join(models.names())}")
    workdir = args.workdir or f"runs/{config.experiment}/{config.model.name}"

    from mian_jax.data.pipeline import DataError
    from mian_jax.data.records import RecordError
    from mian_jax.train import loop
    try:
      loop.train_and_evaluate(config, workdir, fresh=args.fresh)
    except (DataError, RecordError, loop.TrainingError) as e:
      raise ConfigError(str(e)) from None
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
