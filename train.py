"""Train a Reformer: ``python train.py --config configs/<name>.py --workdir runs/<name>``.

With no arguments it trains the default configuration (the paper's duplication task, no
download) in ``runs/duplication`` and prints the hash-count evaluation table. Any setting can be
overridden: ``--config.num_steps=100 --config.model.lsh_n_hashes=2``. Multi-host: pass
``--coordinator_address``, ``--num_processes`` and ``--process_id`` (automatic on TPU pods with
``--distributed``).
"""

import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from reformer_jax.runtime import configure_xla
from reformer_jax.train import run_main

_ROOT = pathlib.Path(__file__).resolve().parent
config_flags.DEFINE_config_file(
    "config",
    str(_ROOT / "configs" / "duplication.py"),
    "Training configuration file.",
    lock_config=True,
)
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "Index of this process (multi-host).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (TPU pods, SLURM).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    configure_xla()
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
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


if __name__ == "__main__":
    app.run(main)
