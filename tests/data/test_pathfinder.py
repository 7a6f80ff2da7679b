import collections

import numpy as np
import pytest

from reformer_jax.data import get_source
from reformer_jax.data.pathfinder import (
    DIFFICULTY,
    Pathfinder,
    draw_example,
    example_rng,
    read_lra_folder,
    settings_for,
    write_lra_folder,
)
from tests.data.lra_checks import check_conventions, take


def _flood(image: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """Independent reference: the 8-connected component of non-zero pixels containing ``seed``
    (breadth-first search)."""
    h, w = image.shape
    seen = np.zeros_like(image, bool)
    queue = collections.deque([seed])
    seen[seed] = True
    while queue:
        r, c = queue.popleft()
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if 0 <= rr < h and 0 <= cc < w and image[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
    return seen


def _components(image):
    left, count = image > 0, 0
    while left.any():
        count += 1
        left &= ~_flood(image, tuple(np.argwhere(left)[0]))
    return count


@pytest.mark.parametrize("size", [32, 128])
def test_markers_connected_iff_positive(size):
    """What is tested: the image drawn WITHOUT gaps (``solid``: every contour as a continuous
    8-connected path, markers included) connects the two marker centres (flood fill over non-zero
    pixels, 8-connectivity) exactly when the label is 1. Catches markers put on different
    contours for positives, contours touching each other (a negative that is secretly connected),
    or markers off the contour ends. The task image itself is the solid one minus the gaps:
    a subset of its pixels, with more connected pieces (the contours are really dashed)."""
    cfg = settings_for(size)
    n = 6 if size == 32 else 2
    for i in range(n):
        ex = draw_example(example_rng(7, "test", i), cfg, i % 2)
        (r0, c0), (r1, c1) = ex.markers
        assert ex.solid[r0, c0] and ex.solid[r1, c1] and ex.image[r0, c0] and ex.image[r1, c1]
        assert np.hypot(r0 - r1, c0 - c1) > 2 * cfg.marker_radius  # Two distinct markers.
        connected = _flood(ex.solid, (r0, c0))[r1, c1]
        assert connected == bool(ex.label), (i, ex.label)
        assert not (ex.image.astype(bool) & ~ex.solid.astype(bool)).any()
        assert _components(ex.image) > _components(ex.solid)
        assert ex.image.shape == (size, size) and set(np.unique(ex.image)) <= {0, 255}


def test_reproducible_balanced_and_lengths():
    """Catches unseeded drawing, labels not balanced, or the difficulty ignored."""
    src = Pathfinder(32, num_train=6, num_validation=4, num_test=4, generator_seed=3)
    again = Pathfinder(32, num_train=6, num_validation=4, num_test=4, generator_seed=3)
    other = Pathfinder(32, num_train=6, num_validation=4, num_test=4, generator_seed=4)
    a, b, c = (take(s.batches("validation", 4), 1)[0] for s in (src, again, other))
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert (a.inputs != c.inputs).any()
    assert a.labels.tolist() == [0, 1, 0, 1]
    assert (src.seq_len, src.vocab_size, src.num_classes) == (1024, 256, 2)
    assert Pathfinder(128, num_train=2, num_validation=2, num_test=2).seq_len == 16384
    assert [settings_for(32, d).contour_length for d in DIFFICULTY] == [6, 9, 14]
    assert settings_for(32, "easy").num_distractors == 10  # 20 // (6 // 3), LRA's rule.
    check_conventions(src, batch_size=4, steps=2)
    assert isinstance(get_source("pathfinder", num_train=2, num_validation=2), Pathfinder)
    with pytest.raises(ValueError, match="resolution"):
        settings_for(64)


def test_reads_lra_release_layout(tmp_path):
    """Catches a wrong metadata column (label), file order, or the 80/10/10 cut (LRA's)."""
    root = write_lra_folder(tmp_path, 20, per_file=8, seed=1)
    assert root == tmp_path / "pathfinder32" / "curv_contour_length_14"
    first = (root / "metadata" / "0.npy").read_text().splitlines()[1].split()
    assert first[:4] == ["imgs/0", "sample_1.png", "1", "1"]
    (root / "imgs" / "2" / "sample_19.png").write_bytes(b"")  # Empty file: skipped, as LRA.
    paths, labels = read_lra_folder(root)
    assert len(paths) == 19 and labels.tolist() == [j % 2 for j in range(19)]
    src = Pathfinder(32, data_dir=tmp_path)
    assert [src.num_examples(s) for s in ("train", "validation", "test")] == [15, 1, 3]
    img, label = src.image("validation", 0)  # Example 15.
    want = draw_example(example_rng(1, "release", 15), settings_for(32), 1).image
    np.testing.assert_array_equal(img, want)
    assert label == 1
    assert Pathfinder(32, data_dir=root).num_examples("test") == 3  # The directory itself.
    parallel = write_lra_folder(tmp_path / "p", 20, per_file=8, seed=1, workers=2)
    for j in (0, 7, 19):
        path = f"imgs/{j // 8}/sample_{j}.png"
        if j != 19:
            assert (parallel / path).read_bytes() == (root / path).read_bytes()
    with pytest.raises(FileNotFoundError, match="metadata"):
        Pathfinder(32, "easy", data_dir=tmp_path)
