"""The LRA harness at toy size: a row per (registered family, task), schema-valid, seeded and
reproducible, families taken from the kind registry, and the dashboard renders from its JSON."""

import dataclasses
import json
from typing import ClassVar

import pytest

from bench import lra
from reformer_jax.layers import attention
from reformer_jax.layers.kinds.full import Full


@dataclasses.dataclass(frozen=True)
class _NewFamily(Full):
    """A family registered after the harness was written (full attention under a new name)."""

    name: ClassVar[str] = "newfamily"


def _toy_preset() -> lra.Preset:
    tiny = dict(batch_size=8, num_steps=4, warmup_steps=1, eval_every=2, eval_batch_size=16)
    return lra.Preset(
        name="toy",
        description="test size",
        model=dict(
            d_model=16,
            d_ff=32,
            n_layers=1,
            n_heads=2,
            d_head=8,
            residual="standard",
            local_chunk_len=16,
            local_chunks_after=1,
        ),
        train=dict(learning_rate=3e-3, schedule="constant"),
        tasks={
            "listops": lra.TaskSpec(
                "listops", 64, lra._listops(64, 10, 60, (32, 16, 16)), train=tiny
            ),
            "pathfinder": lra.TaskSpec(
                "pathfinder", 1024, **lra._pathfinder(32, 40), pooling="mean", train=tiny
            ),
            # Its data is never present in the test: the row must say so, not fail.
            "retrieval": lra.TaskSpec(
                "aan", 64, lambda d: dict(data_dir=str(d / "absent"), seq_len=64)
            ),
        },
        speed_model={},
        speed_batch_size=2,
        speed_lengths=(32, 64),
        speed_time_max_length=32,
        speed_steps=1,
        memory_budget_bytes=2**30,
    )


@pytest.fixture
def two_families(monkeypatch):
    """The registry reduced to full attention plus a newly registered family."""
    monkeypatch.setattr(
        attention, "KINDS", {"full": attention.KINDS["full"], "newfamily": _NewFamily()}
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lra-data")


@pytest.mark.slow
def test_harness_rows_reproducible_and_rendered(two_families, data_dir, tmp_path):
    """Catches: families hard-coded in the harness (the newly registered one must get rows), a
    (family, task) without a row, a missing dataset that crashes the run instead of saying "data
    not present", unseeded training (a second run must give the same accuracies), families not run
    through the same encoder and data (full attention under a new name must match full exactly),
    and a JSON the dashboard cannot render."""
    out = tmp_path / "lra.json"
    results = lra.run_harness(_toy_preset(), out, seed=3, data_dir=data_dir, log=lambda _: None)
    on_disk = lra.load_results(out)  # schema-valid
    assert on_disk == json.loads(json.dumps(results))
    assert lra.families(on_disk) == ["full", "newfamily"]
    rows = {(r["family"], r["task"]): r for r in on_disk["accuracy"]}
    assert set(rows) == {(f, t) for f in ("full", "newfamily") for t in lra.TASKS}
    for family in ("full", "newfamily"):
        for task in ("listops", "pathfinder"):
            row = rows[(family, task)]
            assert row["status"] == "ok", row
            assert 0.0 <= row["test_accuracy"] <= 1.0
            assert row["steps"] == 4 and row["best_step"] in (2, 4) and row["seed"] == 3
        assert rows[(family, "retrieval")]["status"] == "data not present"
        assert "tsv" in rows[(family, "retrieval")]["note"]
        for task in ("text", "image", "pathx"):
            assert rows[(family, task)]["status"] == "not run"
    speed = {(r["family"], r["length"]): r for r in on_disk["speed"]}
    assert set(speed) == {(f, n) for f in ("full", "newfamily") for n in (32, 64)}
    assert speed[("full", 32)]["status"] == "ok" and speed[("full", 32)]["steps_per_s"] > 0
    # Beyond the timed lengths: compiled memory only, and it grows with the length.
    assert speed[("full", 64)]["status"] == "not run"
    assert speed[("full", 64)]["peak_memory_bytes"] > speed[("full", 32)]["peak_memory_bytes"]
    # The same encoder for both families: identical parameters and data give identical results.
    assert (
        rows[("full", "listops")]["test_accuracy"]
        == rows[("newfamily", "listops")]["test_accuracy"]
    )

    again = lra.run_harness(
        _toy_preset(),
        tmp_path / "again.json",
        families=["newfamily"],
        tasks=["listops"],
        seed=3,
        data_dir=data_dir,
        speed=False,
        log=lambda _: None,
    )
    (row,) = again["accuracy"]
    for key in ("test_accuracy", "validation_accuracy", "best_step"):
        assert row[key] == rows[("newfamily", "listops")][key]

    written = lra.write_dashboard(on_disk, tmp_path / "docs")
    md = written["md"].read_text()
    assert "newfamily" in md and "data not present" in md
    assert f"{100 * rows[('full', 'listops')]['test_accuracy']:.2f}" in md


def test_families_come_from_the_kind_registry():
    """Catches: a harness iterating its own list of families (a new kind would be left out)."""
    assert lra.registered_families() == list(attention.KINDS)


def test_family_record_compares_sparse_with_its_pattern():
    """Catches: the sparse family (BigBird by default) compared with LRA's Sparse Transformer
    row, whose ListOps accuracy is 19 points lower."""
    from reformer_jax.config import ReformerConfig

    cfg = ReformerConfig(attention_pattern=("sparse",), causal=False)
    own = lra.family_settings("sparse", cfg)
    assert own["sparse_pattern"] == "bigbird" and "lsh_n_hashes" not in own
    assert lra.lra_model_for("sparse", own) == "BigBird"
    assert lra.lra_model_for("sparse", dict(own, sparse_pattern="strided")) == "Sparse Transformer"
    results = lra.new_results({}, {})
    results["families"] = {"sparse": {"lra_model": "BigBird"}}
    lra.add_accuracy(results, "sparse", "listops", test_accuracy=0.3)
    header, rows = lra.accuracy_table(results)
    assert rows[0][header.index("ListOps (LRA)")] == "36.05"


@pytest.mark.slow
def test_out_of_memory_by_compiled_budget(tmp_path):
    """Catches: a fit check that runs the step (or ignores the budget) instead of reading the
    compiled memory: with a 1-byte budget the row must be "out of memory", with its memory."""
    preset = dataclasses.replace(_toy_preset(), memory_budget_bytes=1)
    row = lra.measure_speed(preset, "full", 32, seed=0, data_dir=tmp_path)
    assert row["status"] == "out of memory" and row["peak_memory_bytes"] > 1
    assert "steps_per_s" not in row
    assert row["settings"]["data"].startswith("synthetic bytes")


def test_merge_keeps_every_part_and_refuses_other_presets():
    """Catches: merging parallel runs that drops rows, or that silently mixes presets."""
    a = lra.new_results({"cpu_model": "x"}, {"preset": "cpu", "seed": 0})
    lra.add_accuracy(a, "full", "listops", test_accuracy=0.3)
    b = lra.new_results({"cpu_model": "x"}, {"preset": "cpu", "seed": 0})
    b["families"] = {"full": {"lra_model": "Transformer"}}
    lra.add_accuracy(b, "full", "pathfinder", test_accuracy=0.5)
    lra.add_speed(b, "full", 1024, steps_per_s=2.0)
    merged = lra.merge_results([a, b])
    assert {(r["family"], r["task"]) for r in merged["accuracy"]} == {
        ("full", "listops"),
        ("full", "pathfinder"),
    }
    assert len(merged["speed"]) == 1 and merged["families"]["full"]["lra_model"] == "Transformer"
    c = lra.new_results({}, {"preset": "lra", "seed": 0})
    with pytest.raises(ValueError, match="settings.preset"):
        lra.merge_results([a, c])


def test_a_kind_that_cannot_encode_gets_not_applicable_rows(monkeypatch, tmp_path):
    """Catches: a causal-only kind (its config refuses causal=False) crashing the whole harness,
    or shown as "not run" (as if a later run could fill it) instead of "not applicable" with the
    config's reason, in the rows and under the dashboard's tables."""

    @dataclasses.dataclass(frozen=True)
    class _CausalOnly(Full):
        name: ClassVar[str] = "causalonly"

        def validate(self, cfg, used, fail):
            if used and not cfg.causal:
                fail("causal", "causalonly layers are causal", "set model.causal=True")

    monkeypatch.setattr(attention, "KINDS", {"causalonly": _CausalOnly()})
    results = lra.run_harness(
        _toy_preset(), tmp_path / "r.json", data_dir=tmp_path, log=lambda _: None
    )
    rows = [*results["accuracy"], *results["speed"]]
    assert {r["status"] for r in rows} == {"not applicable"}
    assert len(results["accuracy"]) == len(lra.TASKS) and len(results["speed"]) == 2
    assert all("causalonly layers are causal" in r["note"] for r in rows)
    assert all("set model.causal=True" not in r["note"] for r in rows)  # the fix is not ours
    md = lra.render_markdown(results, {})
    assert "causalonly: not applicable: cannot build a bidirectional" in md
    assert "not run" not in md


def test_family_settings_are_the_kinds_own_fields():
    """Catches: settings picked by name prefix alone, which credits full attention with LSH's
    model-wide full_attention_below (and leaves it out of LSH's settings)."""
    from reformer_jax.config import ReformerConfig

    cfg = ReformerConfig(attention_pattern=("full",), causal=False)
    assert lra.family_settings("full", cfg) == {"full_dropout": 0.0}
    lsh = lra.family_settings("lsh", cfg)
    assert lsh["full_attention_below"] == 0 and "lsh_n_hashes" in lsh


def test_set_overrides_parse_json_values():
    """Catches: --set values kept as strings (hash_seed="0" would fail the config's int check)
    or a malformed item silently ignored."""
    assert lra._model_overrides(["hash_seed=0", "sparse_pattern=longformer"]) == {
        "hash_seed": 0,
        "sparse_pattern": "longformer",
    }
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        lra._model_overrides(["hash_seed"])
