"""LRA Pathfinder (32x32) and Path-X (128x128): are the two markers joined by one dashed contour?

**Task** (Linsley et al. 2018; LRA, Tay et al. 2021). A grayscale image holds two long dashed
contours, shorter distractor contours and two round markers. Label 1: both markers sit on the two
ends of the same contour; label 0: they sit on ends of the two different long contours. The image
is read as ``S * S`` pixel tokens in raster order (``vocab_size = 256``, ``seq_len`` 1,024 for
Pathfinder, 16,384 for Path-X); no padding.

**Generator** (`draw_example`; our own code, seeded per example; it reproduces the task's
structure with LRA's settings, not the pixels of Linsley's ``snakes2`` script). A contour is
``n`` paddles (straight dashes of ``paddle_length`` pixels) separated by gaps of ``gap``
pixels; each paddle turns from the previous one by an angle uniform in
``[-max_turn, max_turn]``. ``n`` is the difficulty's contour length (LRA's levels: easy 6
(``curv_baseline``), intermediate 9 (``curv_contour_length_9``), hard 14
(``curv_contour_length_14``); LRA's Pathfinder and Path-X results use hard); distractors have
``n // 3`` paddles, ``20 // (n // 3)`` of them at 32x32 and ``35 // (n // 3)`` at 128x128 (LRA's
``num_distractor_snakes``). Contours keep a clearance from each other (no pixel of one is
8-adjacent to a pixel of another, in the image drawn *without* gaps), so two contours never
touch and a label is never ambiguous. The two long contours are placed first (both with marker
room at both ends), the markers are drawn on the ends of the first (label 1) or one end of each
(label 0), then the distractors. Example ``i`` of a split has label ``i % 2`` (balanced) and
comes from ``np.random.default_rng(SeedSequence([seed, crc32(split), i]))``, so it is the same
whatever else is generated. Pixels: 255 on contours and markers, 0 elsewhere.

Time: about 35 ms per image at either size on this project's shared 2-core machine (measured
under load), i.e. LRA's 200,000 images take about 2 hours on one core: the CPU preset uses a few
thousand, and examples are generated lazily when first batched and kept (``cache_size``);
`write_lra_folder` pre-generates a set in LRA's layout for re-use.

**LRA's released folders** (``lra_release/pathfinder32/curv_contour_length_14/`` etc.): images
``imgs/<k>/sample_<j>.png`` and metadata files ``metadata/<k>.npy``, which despite the name are
text, one line per image: ``imgs/<k> sample_<j>.png <j> <label> ...`` (space separated; the
reader also accepts a real ``.npy`` string array with the same columns). Examples are taken in
metadata-file order (numeric), line order within a file; missing or empty PNGs are skipped (the
release has some; LRA filtered them); the splits are LRA's 80% / 10% / 10% cut in that order.
`write_lra_folder` writes generated examples in this layout.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import zlib
from collections.abc import Sequence

import numpy as np
from etils import epath

from reformer_jax.data.examples import ExampleSource, split_sizes
from reformer_jax.paths import as_path

__all__ = [
    "DIFFICULTY",
    "LRA_DIRS",
    "Pathfinder",
    "PathX",
    "PathfinderExample",
    "Settings",
    "draw_example",
    "example_rng",
    "read_lra_folder",
    "settings_for",
    "write_lra_folder",
]

#: Difficulty -> paddles per long contour (LRA's ``contour_length``).
DIFFICULTY = {"easy": 6, "intermediate": 9, "hard": 14}
#: Difficulty -> directory name in LRA's release.
LRA_DIRS = {
    "easy": "curv_baseline",
    "intermediate": "curv_contour_length_9",
    "hard": "curv_contour_length_14",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Geometry of one resolution (pixels; angles in radians)."""

    size: int
    contour_length: int
    paddle_length: float
    gap: float
    thickness: int
    marker_radius: float
    clearance: int
    max_turn: float
    num_distractors: int
    distractor_length: int


def settings_for(size: int, difficulty: str = "hard") -> Settings:
    """LRA-like settings at 32 (Pathfinder) or 128 (Path-X)."""
    if difficulty not in DIFFICULTY:
        raise ValueError(f"pathfinder.difficulty: {difficulty!r}; valid: {sorted(DIFFICULTY)}")
    n = DIFFICULTY[difficulty]
    distractor_length = max(1, n // 3)
    if size == 32:  # LRA: paddle_length 2, margin 1, thickness 0.5 (x2 antialias), radius 1.5.
        return Settings(
            size=32,
            contour_length=n,
            paddle_length=2.0,
            gap=1.5,  # The pixel gap drawn is about gap - 1 (both dash ends are drawn).
            thickness=1,
            marker_radius=1.5,
            clearance=1,
            max_turn=math.pi / 6,
            num_distractors=20 // distractor_length,
            distractor_length=distractor_length,
        )
    if size == 128:  # LRA: margin 2-3, thickness 1.5, radius 3, 35 distractor paddles.
        return Settings(
            size=128,
            contour_length=n,
            paddle_length=5.0,
            gap=3.0,
            thickness=2,
            marker_radius=3.0,
            clearance=2,
            max_turn=math.pi / 5,
            num_distractors=35 // distractor_length,
            distractor_length=distractor_length,
        )
    raise ValueError(f"pathfinder.resolution: {size}; valid: 32 (Pathfinder), 128 (Path-X)")


@dataclasses.dataclass(frozen=True)
class PathfinderExample:
    """One drawn example.

    Attributes:
      image: ``uint8[S, S]``, the task's input (dashed contours, markers).
      label: 1 if the markers are on the two ends of one contour, else 0.
      solid: ``uint8[S, S]``, the same contours drawn without gaps (and the markers): the
        ground truth for connectivity checks.
      markers: ``int[2, 2]``, the (row, column) centres of the two markers.
    """

    image: np.ndarray
    label: int
    solid: np.ndarray
    markers: np.ndarray


def _brush(centre: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels ``[..., k, 2]`` (row, col) covered by a ``thickness x thickness`` brush along the
    path pixels ``centre [..., k, 2]``."""
    if thickness == 1:
        return centre
    out = centre[..., :, None, :] + _BRUSH[thickness]
    return out.reshape(*centre.shape[:-2], -1, 2)


_BRUSH = {k: np.stack(np.meshgrid(range(k), range(k)), -1).reshape(-1, 2) for k in range(1, 5)}


def _disc(centre: np.ndarray, radius: float) -> np.ndarray:
    r = int(math.floor(radius))
    d = np.stack(np.meshgrid(range(-r, r + 1), range(-r, r + 1)), -1).reshape(-1, 2)
    d = d[(d**2).sum(1) <= radius**2]
    return np.rint(centre).astype(np.int64) + d


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    s = mask.shape[0]
    for dr in range(-k, k + 1):
        for dc in range(-k, k + 1):
            src = mask[max(0, -dr) : s - max(0, dr), max(0, -dc) : s - max(0, dc)]
            out[max(0, dr) : s - max(0, -dr), max(0, dc) : s - max(0, -dc)] |= src
    return out


class _Retry(Exception):
    pass


def _contour(
    rng, cfg: Settings, n: int, blocked: np.ndarray, with_markers: bool, restarts: int = 50
):
    """(dash pixels, solid pixels, end points) of one contour avoiding ``blocked``."""
    s, margin = cfg.size, int(math.ceil(cfg.marker_radius))
    # Points every <= 1/4 pixel along a paddle and its gap (consecutive pixels 8-adjacent).
    steps = int(math.ceil(4 * (cfg.paddle_length + cfg.gap)))
    t_grid = np.arange(steps + 1) / steps
    for _ in range(restarts):
        start = rng.uniform(margin, s - 1 - margin, size=2)
        # The state before each paddle; a paddle with no room is undone (backtracking).
        states = [(start, rng.uniform(0, 2 * math.pi))]
        dashes, solid, backtracks = [], [], 0
        while len(dashes) < n:
            k = len(dashes)
            p, heading = states[-1]
            # Eight candidate headings at once; the first with room wins. Blocked by the border
            # or another contour, the later candidates turn more sharply (up to 90 degrees).
            turns = np.minimum(cfg.max_turn * (1 + np.arange(8) // 3), math.pi / 2)
            h_all = heading + rng.uniform(-1.0, 1.0, size=8) * turns
            if k == 0:
                h_all[0] = heading
            length = cfg.paddle_length + (cfg.gap if k < n - 1 else 0.0)
            dirs = np.stack([np.sin(h_all), np.cos(h_all)], -1)  # [8, 2]
            centre = p + length * t_grid[None, :, None] * dirs[:, None, :]  # [8, T, 2]
            centre = np.rint(centre).astype(np.int64)
            pts = _brush(centre, cfg.thickness)
            inside = ((pts >= margin) & (pts < s - margin)).all(axis=(1, 2))
            clipped = np.clip(pts, 0, s - 1)
            free = inside & ~blocked[clipped[..., 0], clipped[..., 1]].any(axis=1)
            if free.any():
                a = int(np.argmax(free))
                h = float(h_all[a])
                after = p + length * dirs[a]
                # The dash: the same points up to the paddle's end (a subset of the solid path).
                on_paddle = t_grid * length <= cfg.paddle_length + 1e-9
                dashes.append(_brush(centre[a][on_paddle], cfg.thickness).reshape(-1, 2))
                solid.append(pts[a].reshape(-1, 2))
                states.append((after, h))
            else:
                if k == 0 or backtracks >= 2 * n:
                    break
                backtracks += 1
                dashes.pop()
                solid.pop()
                states.pop()
        if len(dashes) < n:
            continue
        p = states[-1][0]
        ends = np.stack([start, p])
        pix_solid = np.concatenate(solid)
        if with_markers:
            discs = np.concatenate([_disc(e, cfg.marker_radius) for e in ends])
            if blocked[discs[:, 0], discs[:, 1]].any():
                continue
            pix_solid = np.concatenate([pix_solid, discs])
        return np.concatenate(dashes), pix_solid, ends
    raise _Retry


def draw_example(rng: np.random.Generator, cfg: Settings, label: int) -> PathfinderExample:
    """One example with the given label (module docstring)."""
    s = cfg.size
    for _ in range(100):
        try:
            occupied = np.zeros((s, s), bool)
            image = np.zeros((s, s), np.uint8)
            solid = np.zeros((s, s), np.uint8)
            long_ends = []
            for _c in range(2):
                dash, full, ends = _contour(
                    rng, cfg, cfg.contour_length, _dilate(occupied, cfg.clearance), True
                )
                occupied[full[:, 0], full[:, 1]] = True
                image[dash[:, 0], dash[:, 1]] = 255
                solid[full[:, 0], full[:, 1]] = 255
                long_ends.append(ends)
            for _d in range(cfg.num_distractors):
                try:
                    dash, full, _ = _contour(
                        rng, cfg, cfg.distractor_length, _dilate(occupied, cfg.clearance), False, 4
                    )
                except _Retry:  # No room left: fewer distractors.
                    break
                occupied[full[:, 0], full[:, 1]] = True
                image[dash[:, 0], dash[:, 1]] = 255
                solid[full[:, 0], full[:, 1]] = 255
        except _Retry:
            continue
        if label:
            markers = long_ends[0]
        else:
            markers = np.stack(
                [long_ends[0][int(rng.integers(2))], long_ends[1][int(rng.integers(2))]]
            )
        for m in markers:
            disc = _disc(m, cfg.marker_radius)
            image[disc[:, 0], disc[:, 1]] = 255
            solid[disc[:, 0], disc[:, 1]] = 255
        return PathfinderExample(image, int(label), solid, np.rint(markers).astype(np.int64))
    raise RuntimeError(f"pathfinder: could not place the contours in {s}x{s} after 100 tries")


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]))


def _write_file(root: epath.Path, cfg: Settings, seed: int, k: int, lo: int, hi: int) -> None:
    """Images ``lo..hi-1`` into ``imgs/<k>/`` and their metadata file ``metadata/<k>.npy``."""
    from PIL import Image

    (root / "imgs" / str(k)).mkdir(parents=True, exist_ok=True)
    lines = []
    for j in range(lo, hi):
        ex = draw_example(example_rng(seed, "release", j), cfg, j % 2)
        name = f"sample_{j}.png"
        with (root / "imgs" / str(k) / name).open("wb") as f:
            Image.fromarray(ex.image, mode="L").save(f, format="PNG")
        lines.append(
            f"imgs/{k} {name} {j} {ex.label} {cfg.max_turn:.3f} {cfg.contour_length} "
            f"{cfg.distractor_length} {cfg.paddle_length} {cfg.thickness} {cfg.gap}\n"
        )
    (root / "metadata" / f"{k}.npy").write_text("".join(lines))


def write_lra_folder(
    out_dir: str | os.PathLike,
    num_examples: int,
    *,
    resolution: int = 32,
    difficulty: str = "hard",
    seed: int = 0,
    per_file: int = 1000,
    workers: int = 1,
) -> epath.Path:
    """Writes generated examples in LRA's release layout; returns the difficulty directory.

    Image ``j`` is example ``j`` of the generator's ``"release"`` split (label ``j % 2``), so the
    files do not depend on ``per_file`` or ``workers`` (processes drawing the files in parallel).
    """
    cfg = settings_for(resolution, difficulty)
    root = as_path(out_dir) / f"pathfinder{resolution}" / LRA_DIRS[difficulty]
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    jobs = [
        (root, cfg, seed, k, k * per_file, min(num_examples, (k + 1) * per_file))
        for k in range(math.ceil(num_examples / per_file))
    ]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            for future in [pool.submit(_write_file, *job) for job in jobs]:
                future.result()
    else:
        for job in jobs:
            _write_file(*job)
    return root


def _metadata_rows(path: epath.Path) -> list[list[str]]:
    raw = path.read_bytes()
    if raw.startswith(b"\x93NUMPY"):
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
        return [[str(x) for x in row] for row in np.atleast_2d(arr)]
    return [line.split() for line in raw.decode("utf-8").splitlines() if line.strip()]


def read_lra_folder(root: str | os.PathLike) -> tuple[list[epath.Path], np.ndarray]:
    """(image paths, labels) of one difficulty directory of LRA's release (module docstring)."""
    root = as_path(root)
    meta = root / "metadata"
    files = sorted(
        meta.glob("*.npy"),
        key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.stem),
    )
    if not files:
        raise FileNotFoundError(f"{meta}/*.npy not found")
    paths, labels = [], []
    for f in files:
        for row in _metadata_rows(f):
            path = root / row[0] / row[1]
            try:
                if path.stat().length == 0:
                    continue
            except FileNotFoundError:
                continue
            paths.append(path)
            labels.append(int(float(row[3])))
    return paths, np.asarray(labels, np.int32)


class Pathfinder(ExampleSource):
    """Pathfinder (``resolution=32``) or Path-X (``resolution=128``) as a classification source.

    Args:
      resolution: 32 or 128.
      difficulty: ``"easy"``, ``"intermediate"`` or ``"hard"`` (LRA: hard).
      data_dir: None to generate examples (module docstring); else LRA's released data: a
        directory holding ``pathfinder{resolution}/{LRA_DIRS[difficulty]}/`` (e.g. the unpacked
        ``lra_release/``), or that difficulty directory itself.
      num_train, num_validation, num_test: generated split sizes (LRA: 80/10/10 of 200,000).
      generator_seed: seed of the generated examples.
      cache_size: generated or decoded images kept in memory (each ``S * S`` bytes).
    """

    vocab_size = 256
    num_classes = 2
    splits = ("train", "validation", "test")
    split_aliases = {"eval": "validation", "val": "validation"}

    def __init__(
        self,
        resolution: int = 32,
        difficulty: str = "hard",
        data_dir: str | os.PathLike | None = None,
        *,
        num_train: int = 160_000,
        num_validation: int = 20_000,
        num_test: int = 20_000,
        generator_seed: int = 0,
        cache_size: int = 200_000,
    ):
        self.settings = settings_for(resolution, difficulty)
        self.resolution = resolution
        self.seq_len = resolution * resolution
        self.generator_seed = int(generator_seed)
        self.cache_size = int(cache_size)
        self._cache: dict[tuple[str, int], np.ndarray] = {}
        self._files: dict[str, tuple[Sequence[epath.Path], np.ndarray]] | None = None
        if data_dir is None:
            self._sizes = {"train": num_train, "validation": num_validation, "test": num_test}
            return
        data_dir = as_path(data_dir)
        root = data_dir
        if not (root / "metadata").is_dir():
            root = data_dir / f"pathfinder{resolution}" / LRA_DIRS[difficulty]
        if not (root / "metadata").is_dir():
            raise FileNotFoundError(
                f"LRA Pathfinder data not found: place LRA's release (lra_release.gz, unpacked) "
                f"so that {root}/metadata/*.npy and {root}/imgs/ exist, or pass data_dir=None "
                "to generate the task"
            )
        paths, labels = read_lra_folder(root)
        cuts = split_sizes(len(paths), (0.8, 0.1, 0.1))
        self._files, start = {}, 0
        for split, n in zip(self.splits, cuts, strict=True):
            self._files[split] = (paths[start : start + n], labels[start : start + n])
            start += n
        self._sizes = {s: len(v[1]) for s, v in self._files.items()}

    def _split_len(self, split: str) -> int:
        return self._sizes[split]

    def image(self, split: str, index: int) -> tuple[np.ndarray, int]:
        """(``uint8[S, S]`` image, label) of example ``index`` of ``split``."""
        split = self.canonical_split(split)
        if self._files is None:
            label = index % 2
        else:
            label = int(self._files[split][1][index])
        key = (split, index)
        if key not in self._cache:
            if self._files is None:
                rng = example_rng(self.generator_seed, split, index)
                img = draw_example(rng, self.settings, label).image
            else:
                from PIL import Image

                with self._files[split][0][index].open("rb") as f, Image.open(f) as im:
                    img = np.asarray(im.convert("L"), np.uint8)
                if img.shape != (self.resolution, self.resolution):
                    raise ValueError(
                        f"{self._files[split][0][index]}: image {img.shape}, expected "
                        f"{self.resolution}x{self.resolution}"
                    )
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = img
        return self._cache[key], label

    def _example(self, split: str, index: int):
        img, label = self.image(split, index)
        return img.reshape(-1).astype(np.int32), label


class PathX(Pathfinder):
    """Path-X: `Pathfinder` at 128x128 (``seq_len`` 16,384); same arguments."""

    def __init__(self, resolution: int = 128, difficulty: str = "hard", **kwargs):
        super().__init__(resolution, difficulty, **kwargs)
