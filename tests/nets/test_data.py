"""Crops: the crop camera sees exactly what the crop shows; boxes; uncropping."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxface.camera import PerspectiveCamera, project
from jaxface.nets import crop_camera_of, crop_landmarks, crop_to_box, landmark_box, uncrop_camera


def test_landmark_box_ignores_nan():
    lm = np.array([[10, 20], [30, 60], [np.nan, np.nan], [20, 40]], np.float32)
    np.testing.assert_allclose(landmark_box(lm, margin=2.0), [20, 40, 80])


def test_crop_camera_projects_into_the_crop(rng):
    cam = PerspectiveCamera(fx=jnp.float32(500), fy=jnp.float32(500), cx=jnp.float32(240),
                            cy=jnp.float32(200))
    pts = np.c_[rng.uniform(-60, 60, (30, 2)), rng.uniform(400, 600, 30)].astype(np.float32)
    box = jnp.array([250.0, 190.0, 180.0])
    ccam = crop_camera_of(cam, box, 96)
    np.testing.assert_allclose(project(ccam, pts), crop_landmarks(project(cam, pts), box, 96),
                               atol=1e-3)
    back = uncrop_camera(ccam, box, 96)
    for a, b in zip((back.fx, back.fy, back.cx, back.cy), (cam.fx, cam.fy, cam.cx, cam.cy),
                    strict=True):
        assert np.isclose(float(a), float(b), rtol=1e-6)


def test_crop_to_box_samples_the_right_pixels():
    # an image whose colour encodes the pixel centre coordinates
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    img = np.stack([xx / w, yy / h, np.zeros_like(xx)], -1)
    box = jnp.array([80.0, 60.0, 64.0])  # 64 px square -> 64 px crop: an exact copy
    crop = np.asarray(crop_to_box(img, box, 64))
    np.testing.assert_allclose(crop, img[28:92, 48:112], atol=1e-5)
    # shrinking by 2: crop pixel (i, j) covers source pixels (2i, 2j) .. (2i+1, 2j+1)
    crop2 = np.asarray(crop_to_box(img, box, 32))
    src = img[28:92, 48:112].reshape(32, 2, 32, 2, 3).mean((1, 3))
    np.testing.assert_allclose(crop2[4:-4, 4:-4], src[4:-4, 4:-4], atol=1e-3)
