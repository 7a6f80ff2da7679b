"""The LRA dashboard renders a small results JSON into the right cells, self-contained."""

import html.parser
import json

import pytest

from bench import lra

GIB = 2**30


def _results():
    r = lra.new_results({"cpu_model": "test cpu", "jax": "0.0"}, {"preset": "cpu", "d_model": 64})
    lra.add_accuracy(
        r,
        "full",
        "listops",
        test_accuracy=0.3712,
        validation_accuracy=0.38,
        steps=100,
        best_step=90,
        seed=0,
    )
    lra.add_accuracy(
        r,
        "full",
        "pathfinder",
        test_accuracy=0.60,
        validation_accuracy=0.61,
        steps=100,
        best_step=100,
        seed=0,
    )
    lra.add_accuracy(r, "full", "text", status="data not present")
    lra.add_accuracy(
        r,
        "lsh",
        "listops",
        test_accuracy=0.2,
        validation_accuracy=0.21,
        steps=100,
        best_step=50,
        seed=0,
        settings={"lsh_n_hashes": 2},
    )
    # A family LRA never ran, that only has a speed row: it still gets rows everywhere.
    lra.add_speed(r, "newfam", 1024, steps_per_s=5.0, peak_memory_bytes=1 * GIB)
    for n, sps, mem in ((1024, 8.0, 2 * GIB), (4096, 2.0, 8 * GIB)):
        lra.add_speed(r, "full", n, steps_per_s=sps, peak_memory_bytes=mem, batch_size=32)
    lra.add_speed(r, "full", 16384, status="out of memory")
    for n, sps in ((1024, 4.0), (4096, 3.0), (16384, 1.5)):
        lra.add_speed(r, "lsh", n, steps_per_s=sps, peak_memory_bytes=GIB * n / 4096)
    r["notes"] = "LSH is slower at 1K <and> faster at 4K.\n\n| a | b |\n|---|---|\n| **x** | `y` |"
    return r


def _cell(table, family, column):
    header, rows = table
    row = next(r for r in rows if r[0] == family)
    return row[header.index(column)]


def test_accuracy_cells_beside_lra_table1():
    """Catches numbers in the wrong column, a percent/fraction mix-up, or a missing family."""
    table = lra.accuracy_table(_results())
    assert [r[0] for r in table[1]] == ["full", "lsh", "newfam"]
    assert _cell(table, "full", "ListOps (ours)") == "37.12"
    assert _cell(table, "full", "ListOps (LRA)") == "36.37"
    assert _cell(table, "full", "Pathfinder (ours)") == "60.00"
    assert _cell(table, "full", "Text (ours)") == "data not present"
    assert _cell(table, "full", "Image (ours)") == "not run"
    assert _cell(table, "full", "Path-X (LRA)") == "fail"
    assert _cell(table, "lsh", "ListOps (LRA)") == "37.27"  # lsh is LRA's Reformer.
    assert _cell(table, "lsh", "Pathfinder (ours)") == "not run"
    assert _cell(table, "full", "avg (ours)") == "48.56 (2 tasks)"
    assert _cell(table, "full", "avg (LRA, same tasks)") == "53.89"  # (36.37 + 71.40) / 2 = 53.885.
    assert _cell(table, "full", "avg (LRA, published)") == "54.39"
    assert _cell(table, "lsh", "avg (ours)") == "20.00 (1 task)"
    assert _cell(table, "newfam", "avg (LRA, same tasks)") == "-"
    assert _cell(table, "newfam", "ListOps (LRA)") == "-"
    assert _cell(table, "newfam", "avg (ours)") == "-"


def test_relative_speed_and_memory():
    """Catches an inverted ratio, a ratio against the wrong length, or OOM shown as a number."""
    r = _results()
    assert lra.relative_speed(r, "lsh", 1024) == pytest.approx(0.5)
    assert lra.relative_speed(r, "lsh", 4096) == pytest.approx(1.5)
    assert lra.relative_speed(r, "lsh", 16384) is None
    table = lra.speed_table(r)
    assert _cell(table, "lsh", "1K (ours)") == "0.50x"
    assert _cell(table, "lsh", "4K (ours)") == "1.50x"
    assert _cell(table, "lsh", "1K (LRA)") == "0.5x"
    assert _cell(table, "full", "1K (ours)") == "8 steps/s"
    assert _cell(table, "full", "4K (LRA)") == "1.4 steps/s"
    assert _cell(table, "full", "16K (ours)") == "out of memory"
    assert _cell(table, "lsh", "16K (ours)") == "1.5 steps/s (full: out of memory)"
    assert _cell(table, "newfam", "1K (ours)") == "0.62x"
    assert _cell(table, "newfam", "4K (ours)") == "not run"
    assert "16K (LRA)" not in table[0]
    mem = lra.memory_table(r)
    assert _cell(mem, "full", "4K") == "8.00 GiB"
    assert _cell(mem, "lsh", "1K") == "256.0 MiB"
    assert _cell(mem, "full", "LRA at 4K") == "9.48 GB"
    assert _cell(mem, "full", "16K") == "out of memory"
    points = {p["family"]: p for p in lra.tradeoff_points(r)}
    assert points["lsh"]["speed"] == pytest.approx(1.5) and points["lsh"]["relative"]
    assert set(points) == {"full", "lsh"}  # newfam has no accuracy.


class _Parser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.external, self.imgs, self.tables, self.stack = [], 0, 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in ("meta", "img", "br", "hr", "link"):
            self.stack.append(tag)
        for key in ("src", "href"):
            if key in attrs and not attrs[key].startswith("data:"):
                self.external.append((tag, attrs[key]))
        if tag == "link":
            self.external.append((tag, attrs))
        self.imgs += tag == "img"
        self.tables += tag == "table"

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (self.stack[-3:], tag)
        self.stack.pop()


def test_render_files_self_contained(tmp_path):
    """Catches external assets, broken nesting, unescaped notes, plots missing from the md, or
    the reading's markdown table left as raw pipes in the page."""
    path = tmp_path / "lra.json"
    lra.save_results(_results(), path)
    assert (
        lra.main(["--dashboard", "--from-json", str(path), "--out-dir", str(tmp_path / "d")]) == 0
    )
    md = (tmp_path / "d" / "lra.md").read_text()
    page = (tmp_path / "d" / "lra.html").read_text()
    for name in ("tradeoff", "speed", "memory"):
        assert (tmp_path / "d" / f"lra_{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"(lra_{name}.png)" in md
    assert "| full | Transformer | 37.12 | 36.37 |" in md
    assert "LSH is slower at 1K <and> faster at 4K." in md
    parser = _Parser()
    parser.feed(page)
    parser.close()
    assert parser.external == [] and parser.stack == []
    assert parser.imgs == 3 and parser.tables == 5  # four tables and the reading's
    assert "&lt;and&gt;" in page and "<td>37.12</td>" in page
    assert "<td><b>x</b></td><td><code>y</code></td>" in page and "|---|" not in page
    assert "addEventListener('click'" in page


def test_bad_results_are_refused(tmp_path):
    r = _results()
    with pytest.raises(ValueError, match="fraction"):
        lra.add_accuracy(r, "full", "image", test_accuracy=42.4)  # Percent, not fraction.
    with pytest.raises(ValueError, match="task must be one of"):
        lra.add_accuracy(r, "full", "cifar", test_accuracy=0.4)
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match="schema"):
        lra.load_results(path)
    with pytest.raises(FileNotFoundError, match="harness"):
        lra.load_results(tmp_path / "missing.json")


def test_rerun_replaces_rows():
    r = _results()
    lra.add_accuracy(r, "lsh", "listops", test_accuracy=0.5)
    assert [x["test_accuracy"] for x in r["accuracy"] if x["family"] == "lsh"] == [0.5]
