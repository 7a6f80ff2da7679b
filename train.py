"""Train a Reformer: ``python train.py --config configs/<name>.py --workdir runs/<name>``.

With no arguments it trains the default configuration (the paper's duplication task, no
download) in ``runs/duplication`` and prints the hash-count evaluation table. Any setting can be
overridden: ``--config.num_steps=100 --config.model.lsh_n_hashes=2``. Multi-host: pass
``--coordinator_address``, ``--num_processes`` and ``--process_id`` (automatic on TPU pods with
``--distributed``).
"""

import pathlib
import sys

import ml_collections
from absl import app, flags, logging

from configs.common import base_config
from reformer_jax.runtime import configure_xla
from reformer_jax.train import run_main
from reformer_jax.train.command_line import (
    complete_config,
    config_path_in,
    define_config_flag,
    load_config_file,
    set_config_default,
    unknown_override,
)

_ROOT = pathlib.Path(__file__).resolve().parent
DEFAULT_CONFIG = str(_ROOT / "configs" / "duplication.py")


def _complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    # Every ReformerConfig field and every training setting, so any of them can be overridden.
    return complete_config(config, train_defaults=base_config())


define_config_flag(_complete)
flags.declare_key_flag("config")  # list it in --help with train.py's own flags
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "Index of this process (multi-host).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (TPU pods, SLURM).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        print(
            f"error: unexpected arguments {argv[1:]}; settings are flags, e.g. "
            "--config.num_steps=10 (python train.py --help lists them)",
            file=sys.stderr,
        )
        sys.exit(2)
    configure_xla()
    # orbax logs every checkpoint step at INFO and TFDS warns about unprepared data folders that
    # the data sources handle themselves; errors still show.
    logging.set_verbosity(logging.ERROR)
    config_path = flags.FLAGS["config"].config_filename
    workdir = FLAGS.workdir or str(pathlib.Path("runs") / pathlib.Path(config_path).stem)
    sys.exit(
        run_main(
            FLAGS.config,
            workdir,
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
            distributed=FLAGS.distributed,
        )
    )


def check_command_line(argv: list[str]) -> str | None:
    """One line on a config file that does not load or an override naming no setting."""
    try:
        config = load_config_file(config_path_in(argv, DEFAULT_CONFIG), _complete)
    except ValueError as err:
        return str(err)
    return unknown_override(config, argv)


if __name__ == "__main__":
    problem = check_command_line(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    set_config_default(DEFAULT_CONFIG)
    app.run(main)
