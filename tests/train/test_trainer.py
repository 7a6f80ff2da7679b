"""End-to-end training: every data source, exact resume, sharding, multi-process, bad input."""

import itertools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import zipfile

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import tiny
from reformer_jax import sharding as shd
from reformer_jax.checkpoint import load_model_from_workdir
from reformer_jax.data import Batch, get_source
from reformer_jax.model import ReformerLM
from reformer_jax.sharding import make_mesh
from reformer_jax.train import run_main, train_and_evaluate
from reformer_jax.train.trainer import _model_config, build_train_step, evaluate, hash_table
from tests.data.checks import random_images, write_image_tar
from tests.model_utils import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] == "train":
            out[record["step"]] = record["loss"]
    return out


def test_tiny_duplication_end_to_end(tmp_path):
    config = tiny.get_config()
    result = train_and_evaluate(config, tmp_path / "run")
    assert result.step == 2 and not result.interrupted
    assert set(_losses(tmp_path / "run")) == {1, 2}
    assert np.isfinite(result.eval_metrics["loss"])
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
    assert list((tmp_path / "run" / "tb").iterdir())  # TensorBoard event file
    records = [
        json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n") if x
    ]
    train = [r for r in records if r["split"] == "train"][-1]
    for key in (
        "loss",
        "accuracy",
        "bits_per_token",
        "tokens_per_second",
        "step_time",
        "learning_rate",
    ):
        assert key in train
    assert any(r["split"] == "compile" and r["temp_bytes"] > 0 for r in records)
    model = load_model_from_workdir(tmp_path / "run")
    assert model.cfg.n_layers == 2


def test_hash_table_is_printed(tmp_path, capsys):
    config = tiny.get_config()
    config.eval_hashes = [1, 2]
    result = train_and_evaluate(config, tmp_path / "run")
    assert set(result.hash_table) == {"full", "lsh-1", "lsh-2"}
    assert "| trained \\ evaluated | full | lsh-1 | lsh-2 |" in capsys.readouterr().out


def test_text_source_end_to_end(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 200)
    config = tiny.get_config()
    config.data.name = "text"
    config.data.settings = dict(path=str(corpus), seq_len=32)
    config.model.vocab_size = 256
    result = train_and_evaluate(config, tmp_path / "run")
    assert result.step == 2 and np.isfinite(result.eval_metrics["loss"])


def test_training_lowers_the_loss_on_a_learnable_text(tmp_path):
    """Catches a loop that does not learn although every metric is finite: updates applied with
    the wrong sign, dropped (parameters not carried from step to step), or computed from a
    detached loss. A repeated sentence is learnable in a few dozen steps (its characters'
    unigram entropy alone is ~2.9 nats, against ln 256 = 5.5 at initialisation)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 200)
    config = tiny.get_config()
    config.data.name = "text"
    config.data.settings = dict(path=str(corpus), seq_len=32)
    config.model.vocab_size = 256
    config.num_steps = 30
    config.eval_every = 30
    config.checkpoint_every = 30
    result = train_and_evaluate(config, tmp_path / "run")
    losses = _losses(tmp_path / "run")
    initial = losses[1]  # the loss of step 1 is that of the initial parameters
    assert initial > 5.0
    # 0.6 * ln 256 = 3.3 nats: above the unigram entropy (2.9) a learning model passes within
    # a few dozen steps, far below what a non-learning loop stays at (~5.5).
    assert losses[30] < 0.6 * initial, (initial, losses[30])
    assert result.eval_metrics["loss"] < 0.6 * initial, (initial, result.eval_metrics)


def test_enwik8_source_end_to_end(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    raw = np.random.default_rng(0).integers(0, 256, 12_000, dtype=np.uint8).tobytes()
    with zipfile.ZipFile(manual / "enwik8.zip", "w") as z:
        z.writestr("enwik8", raw)
    config = tiny.get_config()
    config.data.name = "enwik8"
    config.data.settings = dict(
        data_dir=str(tmp_path / "tfds"),
        manual_dir=str(manual),
        seq_len=32,
        train_bytes=10_000,
        validation_bytes=1_000,
        test_bytes=1_000,
        chunk_size=500,
    )
    config.model.vocab_size = 258
    result = train_and_evaluate(config, tmp_path / "run")
    assert result.step == 2 and np.isfinite(result.eval_metrics["loss"])


def test_imagenet64_source_end_to_end(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_image_tar(manual / "train_64x64.tar", random_images(4, 1))
    write_image_tar(manual / "valid_64x64.tar", random_images(2, 2))
    config = tiny.get_config()
    config.seq_len = 12288
    config.data.name = "imagenet64"
    config.data.settings = dict(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
    config.model.update(
        vocab_size=256,
        axial_shape=[64, 64, 3],
        axial_dims=[6, 6, 4],
        lsh_chunk_len=128,
        local_chunk_len=128,
        lsh_n_buckets=None,
    )
    config.batch_size = 2
    config.mesh_shape = (2, 1)
    result = train_and_evaluate(config, tmp_path / "run")
    assert result.step == 2 and np.isfinite(result.eval_metrics["loss"])


def test_resume_after_preemption_gives_identical_losses(tmp_path):
    config = tiny.get_config()
    config.num_steps = 20
    config.checkpoint_every = 5
    config.model.hidden_dropout = 0.1  # the per-step keys must be replayed too
    straight = train_and_evaluate(config, tmp_path / "straight")
    assert not straight.interrupted
    config.stop_at_step = 10  # the SIGTERM path: checkpoint, then exit
    first = train_and_evaluate(config, tmp_path / "resumed")
    assert first.interrupted and first.step == 10
    config.stop_at_step = 0
    second = train_and_evaluate(config, tmp_path / "resumed")
    assert second.step == 20
    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(b) == list(range(1, 21))
    np.testing.assert_allclose(
        [b[s] for s in range(1, 21)], [a[s] for s in range(1, 21)], rtol=1e-6
    )


def test_eight_device_mesh_matches_one_device(tmp_path):
    config = tiny.get_config()
    config.num_steps = 3
    config.model.n_heads = 2
    config.mesh_shape = (1, 1)
    train_and_evaluate(config, tmp_path / "one")
    config.mesh_shape = (4, 2)  # data x model
    train_and_evaluate(config, tmp_path / "eight")
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "eight")
    np.testing.assert_allclose([b[s] for s in (1, 2, 3)], [a[s] for s in (1, 2, 3)], atol=1e-5)


def test_fsdp_mesh_matches_one_device_and_shards_parameters(tmp_path):
    """Catches an FSDP step that computes a different loss (wrong gradient reduction over the
    fsdp axis, rows seen twice) or that silently keeps parameters and Adam moments replicated."""
    config = tiny.get_config()
    config.num_steps = 3
    config.model.n_heads = 2
    config.mesh_shape = (1, 1)
    train_and_evaluate(config, tmp_path / "one")
    config.mesh_shape = (1, 4, 2)  # data x fsdp x model
    train_and_evaluate(config, tmp_path / "fsdp")
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "fsdp")
    np.testing.assert_allclose([b[s] for s in (1, 2, 3)], [a[s] for s in (1, 2, 3)], atol=1e-5)

    # The arrays the step produces are split, not only annotated.
    mesh = shd.make_mesh(config.mesh_shape)
    model_cfg = _model_config(config, config.model.vocab_size)
    parts = build_train_step(config, model_cfg, mesh)
    params = jax.jit(
        lambda: nnx.state(ReformerLM(model_cfg, rngs=nnx.Rngs(0)), nnx.Param),
        out_shardings=parts.param_sharding,
    )()
    opt_state = jax.jit(parts.tx.init, out_shardings=parts.opt_sharding)(params)
    batch = np.zeros((config.batch_size, config.seq_len), np.int32)
    batch = {"inputs": batch, "targets": batch, "weights": np.ones(batch.shape, np.float32)}
    params, opt_state, _ = parts.step(params, opt_state, shd.global_batch(batch, mesh), 0)
    kernel = params["blocks"][0]["feedforward"]["dense_in"]["kernel"].get_value()
    assert kernel.sharding.spec == P(None, "fsdp", "model")
    full = kernel.shape
    assert kernel.addressable_shards[0].data.shape == (full[0], full[1] // 4, full[2] // 2)
    moments = [x for x in jax.tree.leaves(opt_state) if getattr(x, "shape", ()) == full]
    assert moments and all(m.sharding.spec == kernel.sharding.spec for m in moments)


def test_resume_on_a_different_mesh(tmp_path):
    """Catches a mesh-change resume that restores the optimizer state or parameters wrongly
    (e.g. Adam moments reset, or shards placed on the wrong devices): losses and final
    parameters must equal a from-scratch run on the final mesh. Tolerance: the two meshes
    reduce in different orders (float32 ulps, as in the eight-device test: 1e-5 on losses);
    4 Adam steps of lr 1e-2 move parameters by <= 4e-2 and such ulp-level gradient differences
    change an update by a tiny fraction of lr except where a gradient is ~0, so 1e-4 absolute."""
    config = tiny.get_config()
    config.num_steps = 4
    config.mesh_shape = (2, 1)
    config.stop_at_step = 2
    train_and_evaluate(config, tmp_path / "run")
    config.stop_at_step = 0
    config.mesh_shape = (4, 2)
    result = train_and_evaluate(config, tmp_path / "run")
    assert result.step == 4 and np.isfinite(result.eval_metrics["loss"])
    train_and_evaluate(config, tmp_path / "scratch")
    a, b = _losses(tmp_path / "run"), _losses(tmp_path / "scratch")
    np.testing.assert_allclose(
        [a[s] for s in (1, 2, 3, 4)], [b[s] for s in (1, 2, 3, 4)], atol=1e-5
    )
    resumed = nnx.state(load_model_from_workdir(tmp_path / "run"), nnx.Param)
    scratch = nnx.state(load_model_from_workdir(tmp_path / "scratch"), nnx.Param)
    for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(scratch), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-4)


def test_two_processes_agree(tmp_path):
    script = (
        "import sys, json, jax\n"
        "from absl import logging; logging.set_verbosity(logging.ERROR)\n"
        "from configs import tiny\n"
        "from reformer_jax.train import run_main\n"
        "c = tiny.get_config(); c.num_steps = 3; c.mesh_shape = (2, 2)\n"
        "pid = int(sys.argv[1])\n"
        "code = run_main(c, sys.argv[2], coordinator_address='127.0.0.1:' + sys.argv[3],\n"
        "                num_processes=2, process_id=pid)\n"
        "sys.exit(code)\n"
    )
    port = str(20000 + os.getpid() % 20000)
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i), str(tmp_path / "run"), port],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    multi = _losses(tmp_path / "run")  # written by process 0 (global metrics)
    config = tiny.get_config()
    config.num_steps = 3
    config.mesh_shape = (1, 1)
    train_and_evaluate(config, tmp_path / "single")
    single = _losses(tmp_path / "single")
    np.testing.assert_allclose(
        [multi[s] for s in (1, 2, 3)], [single[s] for s in (1, 2, 3)], atol=1e-5
    )


# -- bad input -----------------------------------------------------------------------------


def test_missing_text_file_is_a_clear_error_and_creates_nothing(tmp_path, capsys):
    config = tiny.get_config()
    config.data.name = "text"
    config.data.settings = dict(path=str(tmp_path / "nope.txt"), seq_len=32)
    code = run_main(config, str(tmp_path / "run"))
    assert code == 1
    assert "nope.txt" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("batch_size", 0, "config.batch_size"),
        ("learning_rate", -1.0, "config.learning_rate"),
        ("grad_accum_steps", 3, "config.grad_accum_steps"),
        ("optimizer", "sgd", "config.optimizer"),
        ("model.lsh_n_buckets", 5, "model.lsh_n_buckets"),
        ("mesh_shape", (16, 1), "mesh_shape"),
    ],
)
def test_bad_config_values_are_named(tmp_path, capsys, setting, value, message):
    config = tiny.get_config()
    obj, *_ = [config]
    parts = setting.split(".")
    for part in parts[:-1]:
        obj = obj[part]
    obj[parts[-1]] = value
    assert run_main(config, str(tmp_path / "run")) == 1
    assert message in capsys.readouterr().err


def test_incompatible_workdir_is_refused_and_left_alone(tmp_path, capsys):
    config = tiny.get_config()
    train_and_evaluate(config, tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    config.model.d_model = 32
    config.model.axial_dims = [16, 16]
    assert run_main(config, str(tmp_path / "run")) == 1
    assert "different settings" in capsys.readouterr().err
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    assert before == after


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    config = tiny.get_config()
    config.num_steps = 4
    train_and_evaluate(config, tmp_path / "run")  # good checkpoints at steps 2 and 4
    config.num_steps = 30
    config.learning_rate = 1e30  # resumes at step 4, then diverges
    code = run_main(config, str(tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 1 and "loss became" in err and "step 4" in err
    steps = sorted(
        int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()
    )
    assert steps == [2, 4], "no diverged state may be checkpointed"
    model = load_model_from_workdir(tmp_path / "run")
    for leaf in jax.tree.leaves(nnx.state(model)):
        assert np.isfinite(np.asarray(leaf)).all()


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    config = tiny.get_config()
    config.num_steps = 3
    train_and_evaluate(config, tmp_path / "full")
    config.grad_accum_steps = 4
    train_and_evaluate(config, tmp_path / "accum")
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "accum")
    np.testing.assert_allclose([b[s] for s in (1, 2, 3)], [a[s] for s in (1, 2, 3)], atol=1e-5)


def test_a_real_sigterm_checkpoints_and_exits(tmp_path):
    workdir = tmp_path / "run"
    args = [
        sys.executable,
        "train.py",
        "--config",
        "configs/tiny.py",
        "--workdir",
        str(workdir),
        "--config.num_steps=100000",
        "--config.checkpoint_every=100000",
        "--config.log_every=1",
        "--config.eval_every=100000",
    ]
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(_losses(workdir)) >= 3:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0].decode()
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 3, output
    assert "checkpoint saved" in output
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) == 1 and steps[0] >= 3


def _memory_config(corpus: pathlib.Path, **model):
    from configs import text_xl

    config = text_xl.get_config()
    config.seq_len = 16
    config.data.settings = dict(path=str(corpus), seq_len=16, eval_fraction=0.2, order="streams")
    config.model.update(
        d_model=16, d_ff=32, n_layers=2, n_heads=2, d_head=8, mem_len=16, hidden_dropout=0.1
    )
    config.model.update(model)
    config.update(
        batch_size=4,
        eval_mem_len=32,
        num_steps=8,
        checkpoint_every=4,
        eval_every=8,
        eval_batches=0,
        log_every=1,
        warmup_steps=0,
        mesh_shape=(1, 1),
    )
    return config


@pytest.mark.slow
def test_memory_task_resumes_with_its_memory(tmp_path):
    """Catches a memory (the task's carry, with its compressed part) that is not checkpointed or
    not restored: the resumed run's losses after step 4 would come from an empty memory and
    differ from the uninterrupted run's. Also: the reconstruction loss is reported apart and the
    evaluation (with a longer memory) runs over the whole held-out streams."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(bytes(range(32, 127)) * 40)
    config = _memory_config(corpus, mem_len=8, cmem_len=4, cmem_rate=2, cmem_method="conv")
    straight = train_and_evaluate(config, tmp_path / "straight")
    config.stop_at_step = 4
    first = train_and_evaluate(config, tmp_path / "resumed")
    assert first.interrupted and first.step == 4
    config.stop_at_step = 0
    second = train_and_evaluate(config, tmp_path / "resumed")
    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(b) == list(range(1, 9))
    np.testing.assert_allclose([b[s] for s in range(1, 9)], [a[s] for s in range(1, 9)], rtol=1e-6)
    assert second.step == 8 and straight.train_metrics[-1]["reconstruction_loss"] > 0
    assert np.isfinite(straight.eval_metrics["loss"]) and straight.eval_metrics["tokens"] > 0


def test_memory_task_needs_contiguous_streams(tmp_path):
    """Catches a memory task silently trained on random windows (its memory would hold
    unrelated text)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"abc " * 500)
    config = _memory_config(corpus)
    config.data.settings.order = "windows"
    with pytest.raises(ValueError, match=r"config\.data\.settings\.order: .*'streams'"):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# -- evaluation against NumPy ---------------------------------------------------------------


class _EvalSource:
    """Three fixed evaluation batches: one with a zero-weight row, the last padded (2 rows)."""

    vocab_size, seq_len = 17, 16

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.data = []
        for i in range(3):
            tokens = rng.integers(0, 17, (4, 16)).astype(np.int32)
            weights = (rng.random((4, 16)) < 0.6).astype(np.float32)
            weights[:, 0] = 0
            if i == 0:
                weights[1] = 0  # a row that scores nothing
            if i == 2:
                tokens[2:], weights[2:] = 0, 0  # padding rows of the last batch
            self.data.append(Batch(tokens, tokens.copy(), weights))

    def batches(self, split, batch_size, **kwargs):
        assert split == "eval" and batch_size == 4
        yield from self.data


def _numpy_eval(logits_fn, batches) -> dict[str, float]:
    """Token-weighted loss, accuracy and bits per token, from the definitions, in float64."""
    loss_sum = weight = correct = 0.0
    for batch in batches:
        logits = np.asarray(logits_fn(batch.inputs), np.float64)[:, :-1]
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        targets, w = batch.targets[:, 1:], batch.weights[:, 1:]
        nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
        loss_sum += float((nll * w).sum())
        weight += float(w.sum())
        correct += float(((logits.argmax(-1) == targets) * w).sum())
    return {
        "loss": loss_sum / weight,
        "accuracy": correct / weight,
        "bits_per_token": loss_sum / weight / np.log(2),
    }


def _eval_setup():
    cfg = tiny_config(attention_pattern=("lsh",), lsh_n_hashes=2)
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    for block in model.blocks:  # attention-dominated logits: the attention setting shows
        block.attention.out.kernel.value = block.attention.out.kernel.value * 100
    graphdef, params = nnx.split(model, nnx.Param)
    config = tiny.get_config()
    config.update(seq_len=16, batch_size=4, eval_batch_size=0, eval_batches=3, eval_hashes=[1, 4])
    return cfg, graphdef, params, config, make_mesh((1, 1))


def _logits_fn(cfg, params):
    graphdef = nnx.split(ReformerLM(cfg, rngs=nnx.Rngs(0)), nnx.Param)[0]
    return jax.jit(lambda tokens: nnx.merge(graphdef, params)(tokens))


def test_evaluate_equals_numpy_with_zero_weight_rows_and_a_padded_last_batch():
    """Catches evaluation that averages per-batch means (the padded last batch would count as
    much as a full one), counts zero-weight rows or padding as predictions, reports accuracy
    over all positions, uses log base e for bits, or evaluates more batches than asked."""
    cfg, graphdef, params, config, mesh = _eval_setup()
    source = _EvalSource()
    logits = _logits_fn(cfg, params)
    for n_batches in (3, 2):
        config.eval_batches = n_batches
        got = evaluate(params, graphdef, source, config, mesh)
        want = _numpy_eval(logits, source.data[:n_batches])
        # float32 logits and sums against float64: relative 1e-5 covers the rounding of sums of
        # ~100 float32 terms (100 * 6e-8).
        for name in ("loss", "accuracy", "bits_per_token"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)


def test_hash_table_equals_numpy_accuracy_of_each_attention_setting():
    """Catches a hash table whose columns do not evaluate what they name: every column using the
    trained hash count, the 'full' column still running LSH, or a column evaluating another
    model (each is compared with NumPy accuracy of that setting's logits)."""
    cfg, graphdef, params, config, mesh = _eval_setup()
    source = _EvalSource()
    table = hash_table(params, cfg, source, config, mesh)
    settings = {
        "full": cfg.replace(full_attention_below=17),
        "lsh-1": cfg.replace(lsh_n_hashes=1, full_attention_below=0),
        "lsh-4": cfg.replace(lsh_n_hashes=4, full_attention_below=0),
    }
    assert list(table) == list(settings)
    accuracies = {}
    for name, setting in settings.items():
        accuracies[name] = _numpy_eval(_logits_fn(setting, params), source.data)["accuracy"]
        np.testing.assert_allclose(table[name], accuracies[name], rtol=1e-6, err_msg=name)
    # The settings must be distinguishable here (else a column evaluating another setting
    # could pass): 1 and 4 hashes give different accuracies, so no single setting matches both.
    assert accuracies["lsh-1"] != accuracies["lsh-4"], accuracies


# -- checkpoints of a run -------------------------------------------------------------------


def test_load_model_from_workdir_returns_the_final_weights_and_pruning_keeps_the_promise(
    tmp_path,
):
    """Catches ``load_model_from_workdir`` returning another step's (or the initial) weights:
    the loaded model's NumPy evaluation loss must equal the run's final in-memory evaluation;
    and ``keep_checkpoints`` not pruning to the promised count (checkpoints every step)."""
    config = tiny.get_config()
    config.num_steps = 5
    config.checkpoint_every = 1
    config.keep_checkpoints = 2
    config.eval_every = 5
    result = train_and_evaluate(config, tmp_path / "run")
    steps = sorted(
        int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()
    )
    assert steps == [4, 5]
    model = load_model_from_workdir(tmp_path / "run")
    graphdef, params = nnx.split(model, nnx.Param)
    source = get_source(config.data.name, config.data.settings)
    eval_batches = list(itertools.islice(source.batches("eval", 8, seed=0), 1))
    forward = jax.jit(lambda tokens: nnx.merge(graphdef, params)(tokens))
    want = _numpy_eval(forward, eval_batches)
    np.testing.assert_allclose(result.eval_metrics["loss"], want["loss"], rtol=1e-5)
    earlier = load_model_from_workdir(tmp_path / "run", step=4)
    earlier_forward = jax.jit(lambda tokens: nnx.merge(*nnx.split(earlier, nnx.Param))(tokens))
    assert abs(_numpy_eval(earlier_forward, eval_batches)["loss"] - want["loss"]) > 1e-4


def _truncate_arrays(step_dir: pathlib.Path) -> None:
    """What a full disk or a killed copy leaves: the array data files cut short."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array files under {step_dir}"
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(10)


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_and_is_moved_aside(tmp_path, capsys):
    """Bug caught: a truncated latest step ends the resume in TensorStore tracebacks (or is
    deleted, or a later save of the same step collides with it) although step 2 is intact."""
    from reformer_jax.checkpoint import CheckpointError

    config = tiny.get_config()
    config.num_steps = 4
    train_and_evaluate(config, tmp_path / "run")  # checkpoints at steps 2 and 4
    checkpoints = tmp_path / "run" / "checkpoints"
    _truncate_arrays(checkpoints / "4")
    with pytest.raises(CheckpointError, match="step 4") as err:
        load_model_from_workdir(tmp_path / "run")  # sample.py's loader: names the step
    assert "step=2" in str(err.value) and "\n" not in str(err.value)
    capsys.readouterr()

    assert run_main(config, str(tmp_path / "run")) == 0  # resumes from 2, saves 4 again
    out, err = capsys.readouterr()
    damaged = [line for line in out.splitlines() if "is damaged" in line]
    assert len(damaged) == 1 and "step 4" in damaged[0] and "step 2" in damaged[0], out
    assert "Traceback" not in err and "Event loop is closed" not in err
    assert (tmp_path / "run" / "checkpoints_damaged" / "4").is_dir()  # kept
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["2", "4"]
    assert set(_losses(tmp_path / "run")) >= {3, 4}  # steps 3 and 4 were trained again
    load_model_from_workdir(tmp_path / "run")  # the new step 4 loads

    for step in ("2", "4"):
        _truncate_arrays(checkpoints / step)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
    assert run_main(config, str(tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checkpoint" in err and "can be restored" in err
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*")) == before


def test_text_config_without_a_path_is_an_error_and_creates_nothing(tmp_path, capsys):
    """Bug caught: configs/text.py's path="" is read as "." and the current directory (the
    repository, its runs) silently becomes the corpus."""
    config = tiny.get_config()
    config.data.name = "text"
    config.data.settings = dict(path="", seq_len=32)
    assert run_main(config, str(tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "--config.data.settings.path=" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["file", "foreign-directory"])
def test_workdir_that_is_no_run_is_refused_untouched(tmp_path, capsys, kind):
    """Bug caught: --workdir naming a file ends in a NotADirectoryError traceback; a non-empty
    directory without config.json (a home directory, a data folder) receives a run's files."""
    workdir = tmp_path / "w"
    if kind == "file":
        workdir.write_text("notes")
    else:
        workdir.mkdir()
        (workdir / "notes.txt").write_text("notes")
    before = sorted(tmp_path.rglob("*"))
    assert run_main(tiny.get_config(), str(workdir)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--workdir" in err, err
    assert sorted(tmp_path.rglob("*")) == before
