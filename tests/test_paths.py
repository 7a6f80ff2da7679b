"""gs:// paths reach storage intact: run directories, text corpora and metrics go through
``etils.epath``, here with epath's backend redirected from ``gs://bucket/...`` to a temporary
directory (``pathlib.Path("gs://bucket/x")`` is ``gs:/bucket/x``, which the redirect never sees,
so code that uses pathlib on these paths fails these tests)."""

import contextlib
import io
import json
import os
import pathlib
import tarfile

import numpy as np
import pytest
from etils import epath
from etils.epath import testing as epath_testing

from reformer_jax.data.aan import AAN
from reformer_jax.data.aan import FILES as AAN_FILES
from reformer_jax.data.cifar10 import Cifar10
from reformer_jax.data.imdb import IMDb
from reformer_jax.data.listops import ListOps
from reformer_jax.data.pathfinder import Pathfinder, write_lra_folder
from reformer_jax.data.text import TextFile
from reformer_jax.paths import as_path, is_uri
from reformer_jax.train.metrics import MetricWriter
from reformer_jax.train.trainer import _check_workdir


@contextlib.contextmanager
def fake_bucket(root: pathlib.Path):
    """Every epath operation on ``gs://<rest>`` acts on ``root/<rest>``; others fail loudly."""

    def local(path) -> str:
        path = os.fspath(path)
        if path.startswith(str(root) + os.sep):  # already redirected (epath's replace calls
            return path  # isdir on its destination through the same backend)
        if not path.startswith("gs://"):
            raise AssertionError(f"a bucket operation got the mangled path {path!r}")
        return str(root / path.removeprefix("gs://"))

    def redirect(fn, path, *args, **kwargs):
        return fn(local(path), *args, **kwargs)

    def redirect_glob(fn, pattern):
        return ["gs://" + os.path.relpath(p, root) for p in fn(local(pattern))]

    def redirect_walk(fn, top, **kwargs):
        for dirpath, dirs, files in fn(local(top), **kwargs):
            yield "gs://" + os.path.relpath(dirpath, root), dirs, files

    def redirect_two(fn, path, dst, *args, **kwargs):
        return fn(local(path), local(dst), *args, **kwargs)

    names = ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "rmtree", "remove", "stat")
    with epath_testing.mock_epath(
        **{n: redirect for n in names},
        glob=redirect_glob,
        walk=redirect_walk,
        rename=redirect_two,
        replace=redirect_two,
        copy=redirect_two,
    ):
        yield


def test_as_path_keeps_bucket_paths_and_makes_local_ones_absolute(tmp_path, monkeypatch):
    """Catches ``pathlib.Path(p).absolute()`` on a bucket path (``/cwd/gs:/bucket/run``)."""
    assert str(as_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
    assert is_uri("gs://bucket/run") and not is_uri("runs/gs_like")
    monkeypatch.chdir(tmp_path)
    assert str(as_path("runs/x")) == str(tmp_path / "runs" / "x")


def test_text_corpus_in_a_bucket(tmp_path):
    """Catches a corpus listing or read through pathlib/os.walk (it finds no gs:/ directory)."""
    (tmp_path / "bucket" / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "bucket" / "corpus" / "a.txt").write_bytes(b"a" * 40)
    (tmp_path / "bucket" / "corpus" / "sub" / "b.txt").write_bytes(b"b" * 40)
    (tmp_path / "bucket" / "corpus" / ".hidden").write_bytes(b"h" * 40)
    with fake_bucket(tmp_path):
        source = TextFile("gs://bucket/corpus", seq_len=8, eval_fraction=0.25)
        data = np.concatenate([source.split_bytes("train"), source.split_bytes("eval")])
        single = TextFile("gs://bucket/corpus/a.txt", seq_len=8, eval_fraction=0.25)
    assert bytes(data) == b"a" * 40 + b"\n" + b"b" * 40
    assert len(single.split_bytes("train")) == 30


def test_run_directory_in_a_bucket(tmp_path):
    """Catches a workdir mangled on its way to storage: metrics written under ``gs:/`` locally,
    or a resumable run in a bucket not recognised (its config.json never found)."""
    with fake_bucket(tmp_path):
        workdir = as_path("gs://bucket/run")
        workdir.mkdir(parents=True, exist_ok=True)
        record = {"model": {"bad": "record"}, "train": {"seed": 0}}
        (workdir / "config.json").write_text(json.dumps(record))
        assert _check_workdir(workdir, record) is True
        writer = MetricWriter("gs://bucket/run", enabled=True)
        writer.write(3, "train", {"loss": 1.5})
        writer.close()
    line = (tmp_path / "bucket" / "run" / "metrics.jsonl").read_text().splitlines()[-1]
    assert json.loads(line)["loss"] == 1.5 and json.loads(line)["step"] == 3


def test_fake_bucket_rejects_mangled_paths(tmp_path):
    """The redirect itself: a pathlib-mangled ``gs:/`` path is refused, so the tests above
    cannot pass by accident."""
    with fake_bucket(tmp_path), pytest.raises(AssertionError, match="mangled"):
        epath.Path(str(pathlib.Path("gs://bucket/x"))).exists()


def test_lra_sources_read_and_write_a_bucket(tmp_path):
    """Catches an LRA source that opens its data_dir / manual_dir through pathlib, os.replace,
    tarfile or PIL by name (each turns ``gs://bucket`` into a local ``gs:/bucket`` that the
    redirect refuses) or a recursive glob, which epath refuses on buckets: ListOps and
    Pathfinder generate into the bucket and read back, AAN reads its TSVs, IMDb its unpacked
    directory and CIFAR-10 its archive from the bucket."""
    bucket = tmp_path / "bucket"
    (bucket / "aan").mkdir(parents=True)
    for split, name in AAN_FILES.items():
        lines = [f"{i % 2}.0\t{split}{i}a\t{split}{i}b\tpaper {i}\tcited {i}" for i in range(3)]
        (bucket / "aan" / name).write_text("\n".join(lines) + "\n")
    for split in ("train", "test"):
        for label in ("neg", "pos"):
            (bucket / "imdb" / "aclImdb" / split / label).mkdir(parents=True)
            (bucket / "imdb" / "aclImdb" / split / label / "0_7.txt").write_text(f"{split} {label}")
    (bucket / "cifar").mkdir()
    with tarfile.open(bucket / "cifar" / "cifar-10-binary.tar.gz", "w:gz") as tar:
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            data = np.zeros((2, 1 + 3072), np.uint8).tobytes()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    with fake_bucket(tmp_path):
        listops = ListOps(
            "gs://bucket/listops",
            seq_len=64,
            num_train=4,
            num_validation=2,
            num_test=2,
            max_depth=2,
            max_args=3,
            min_length=1,
            max_length=64,
        )
        root = write_lra_folder("gs://bucket/lra", 4, per_file=2, seed=1)
        pathfinder = Pathfinder(32, data_dir="gs://bucket/lra")
        image, _ = pathfinder.image("train", 0)
        aan = AAN("gs://bucket/aan", seq_len=16)
        imdb = IMDb(
            data_dir=tmp_path / "none", manual_dir="gs://bucket/imdb", seq_len=16, validation_size=1
        )
        cifar = Cifar10(data_dir=tmp_path / "none", manual_dir="gs://bucket/cifar")
    assert str(root) == "gs://bucket/lra/pathfinder32/curv_contour_length_14"
    assert sorted(p.name for p in (bucket / "listops").iterdir()) == [
        "basic_test.tsv",
        "basic_train.tsv",
        "basic_val.tsv",
    ]
    assert listops.num_examples("train") == 4
    assert image.shape == (32, 32) and pathfinder.num_examples("train") == 3
    assert aan.num_examples("train") == 3
    assert imdb.num_examples("test") == 2 and imdb.num_examples("train") == 1
    assert cifar.num_examples("test") == 2
