"""bench/ablations.py: a tiny end-to-end sweep, refusal to overwrite, JSON round trip, replot."""

import json
import math

import pytest

from bench import ablations

TINY = [
    "--steps", "4", "--eval-every", "2", "--seeds", "0", "--layers", "1", "--d-model", "16",
    "--d-ff", "32", "--heads", "2", "--seq-len", "32", "--batch", "2", "--warmup", "0",
    "--eval-fraction", "0.1",
]  # fmt: skip


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(ablations.pydoc_topics_text()[:4000])
    return path


def test_tiny_sweep_then_refuses_to_overwrite_then_resumes(tmp_path, corpus, capsys):
    out = tmp_path / "results" / "ablations.json"
    args = [*TINY, "--workdir", str(tmp_path / "runs"), "--out", str(out), "--corpus", str(corpus)]
    assert ablations.main([*args, "--variants", "separate-qk,standard"]) == 0
    payload = ablations.read_json(out)
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert [r["variant"] for r in payload["runs"]] == ["separate-qk", "standard"]
    for run in payload["runs"]:
        assert [p["step"] for p in run["eval"]] == [2, 4]
        assert math.isfinite(run["final_bpc"]) and 0 < run["final_bpc"] < 9
        assert run["final_bpc"] == run["eval"][-1]["bpc"]
    models = {r["variant"]: r["model"] for r in payload["runs"]}
    assert models["separate-qk"]["residual"] == "reversible"
    assert models["standard"]["residual"] == "standard"
    # Same everything except the residual architecture.
    differ = {k for k in models["standard"] if models["standard"][k] != models["separate-qk"][k]}
    assert differ == {"residual"}

    before = (tmp_path / "runs" / "standard-seed0" / "metrics.jsonl").read_text()
    with pytest.raises(ablations.AblationError, match="--resume"):
        ablations.main([*args, "--variants", "standard"])
    assert (tmp_path / "runs" / "standard-seed0" / "metrics.jsonl").read_text() == before
    # --resume reuses the finished run: same curve, no new training.
    assert ablations.main([*args, "--variants", "standard", "--resume"]) == 0
    again = ablations.read_json(out)["runs"][0]
    assert again["eval"] == payload["runs"][1]["eval"]
    capsys.readouterr()


def test_variants_differ_only_in_the_ablated_setting(corpus):
    args = ablations.parse_args(TINY)
    model = {
        v: ablations.train_config(args, v, 0, corpus).model.to_dict() for v in ablations.VARIANTS
    }
    shared = model["shared-qk"]
    assert shared["attention_pattern"] == ["lsh"] and shared["full_attention_below"] == 33
    assert model["separate-qk"]["attention_pattern"] == ["full"]
    assert model["shared-qk-standard"]["residual"] == "standard"
    train = {v: ablations.train_config(args, v, 0, corpus) for v in ablations.VARIANTS}
    base = train["separate-qk"].to_dict()
    for config in train.values():
        assert {k: v for k, v in config.to_dict().items() if k != "model"} == {
            k: v for k, v in base.items() if k != "model"
        }


def _fake_payload():
    runs = []
    for seed in (0, 1):
        for i, variant in enumerate(ablations.DEFAULT_VARIANTS):
            curve = [
                {"step": s, "bpc": 5.0 / s**0.3 + 0.01 * i + 0.005 * seed} for s in (10, 20, 30)
            ]
            runs.append(
                {"variant": variant, "label": ablations.VARIANTS[variant][0], "seed": seed,
                 "wall_s": 60.0 + seed, "final_bpc": curve[-1]["bpc"], "eval": curve,
                 "train": curve, "model": {}, "workdir": "w", "median_step_s": 0.1}
            )  # fmt: skip
    settings = dict(steps=30, layers=1, d_model=16, seq_len=32, batch=2)
    return {
        "settings": settings,
        "corpus": {"name": "fake"},
        "runs": runs,
        "summary": ablations.summarize(runs),
    }


def test_summary_json_round_trip_and_replot(tmp_path, capsys):
    payload = _fake_payload()
    summary = {row["variant"]: row for row in payload["summary"]}
    assert summary["shared-qk"]["seeds"] == 2
    assert summary["shared-qk"]["final_bpc_spread"] == pytest.approx(0.005)
    assert summary["standard"]["final_bpc_mean"] == pytest.approx(5.0 / 30**0.3 + 0.0225)
    path = tmp_path / "a.json"
    ablations.write_json(path, payload)
    assert ablations.read_json(path) == json.loads(json.dumps(payload))
    assert ablations.main(["--from-json", str(path)]) == 0
    assert path.with_suffix(".png").stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "reversible, shared QK" in table and "0.0050" in table
    bad = tmp_path / "b.json"
    bad.write_text("{}")
    with pytest.raises(ablations.AblationError, match="not an ablation results file"):
        ablations.read_json(bad)


def test_panels_pair_variants_that_differ_in_one_setting():
    panels = ablations._panels(list(ablations.DEFAULT_VARIANTS))
    assert [members for _, _, members in panels] == [
        ["separate-qk", "shared-qk"],
        ["separate-qk", "standard"],
    ]
    four = ablations._panels(list(ablations.VARIANTS))
    assert all(len(members) == 4 for _, _, members in four)


def test_metrics_of_a_resumed_run_keep_the_last_record_per_step(tmp_path):
    lines = [
        {"step": 2, "split": "eval", "loss": 2.0},
        {"step": 2, "split": "train", "loss": 3.0, "step_time": 0.5},
        {"step": 2, "split": "eval", "loss": 1.0},
        {"step": 0, "split": "compile", "temp_bytes": 1},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    curves = ablations.read_metrics(tmp_path)
    assert curves["eval"] == [{"step": 2, "bpc": 1.0 / math.log(2)}]
    assert curves["train"][0]["step_time_s"] == 0.5


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit):
        ablations.parse_args(["--variants", "separate-qk,nope"])
    with pytest.raises(SystemExit):
        ablations.parse_args(["--steps", "10", "--eval-every", "3"])
