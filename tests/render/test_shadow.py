"""Shadow maps (jaxface.render.shadow) against an independent NumPy ray caster.

The reference says a point is lit iff the ray (directional light) or the segment (point light)
from it towards the light hits no triangle (Moller-Trumbore in float64). A shadow map samples
the occluders on a texel grid and biases the depth test, so the two may differ near shadow
boundaries; agreement is measured on points *away* from boundaries, defined with the reference
alone (:func:`_away_from_boundaries`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.camera import default_camera, look_at, to_screen
from jaxface.mesh.normals import vertex_normals
from jaxface.models import load_default
from jaxface.render import interpolate, rasterize
from jaxface.render import shadow as sd
from jaxface.render.shading import DirectionalLight, PointLight, shade_phong

# --------------------------------------------------------------------------------------------
# NumPy reference (float64 ray casting with a 2D grid of candidate triangles)
# --------------------------------------------------------------------------------------------


def _basis(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = c / np.linalg.norm(c)
    a = np.cross(c, np.eye(3)[np.argmin(np.abs(c))])
    a /= np.linalg.norm(a)
    return a, np.cross(c, a), c


def ray_visibility(verts, tris, points, light_dir=None, light_pos=None, exclude_radius=0.0,
                   t_min=1e-6, grid=48):
    """(...,) 1.0 where nothing blocks the way from ``points`` (..., 3) to the light, else 0.

    ``light_dir``: towards a distant light (ray, t in (t_min, inf)); ``light_pos``: a point
    light (segment). Triangles with a vertex within ``exclude_radius`` of the point are ignored
    (0: none). Candidate triangles come from a grid over the projection along the rays (an
    exact prefilter: each ray projects to one point there).
    """
    v = np.asarray(verts, np.float64)
    tv = v[np.asarray(tris)]
    p = np.asarray(points, np.float64)
    shape = p.shape[:-1]
    p = p.reshape(-1, 3)
    if light_dir is not None:
        d = np.asarray(light_dir, np.float64)
        d = d / np.linalg.norm(d)
        a, b, _ = _basis(d)

        def proj(x):
            return np.stack([x @ a, x @ b], -1)
    else:
        lp = np.asarray(light_pos, np.float64)
        a, b, c = _basis(v.mean(0) - lp)

        def proj(x):
            q = x - lp
            z = q @ c
            assert np.all(z > 0), "the reference needs the scene in front of the point light"
            return np.stack([q @ a / z, q @ b / z], -1)

    tp = proj(tv.reshape(-1, 3)).reshape(-1, 3, 2)
    pp = proj(p)
    lo, hi = pp.min(0), pp.max(0)
    cell = (hi - lo) / grid + 1e-12
    key2 = np.clip(((pp - lo) / cell).astype(int), 0, grid - 1)
    clo = np.floor((tp.min(1) - lo) / cell).astype(int)
    chi = np.floor((tp.max(1) - lo) / cell).astype(int)
    key = key2[:, 0] * grid + key2[:, 1]
    out = np.ones(len(p))
    for k in np.unique(key):
        i, j = divmod(int(k), grid)
        cand = np.nonzero((clo[:, 0] <= i) & (chi[:, 0] >= i) & (clo[:, 1] <= j)
                          & (chi[:, 1] >= j))[0]
        if len(cand) == 0:
            continue
        v0 = tv[cand, 0][None]
        e1 = tv[cand, 1][None] - v0
        e2 = tv[cand, 2][None] - v0
        pts = np.nonzero(key == k)[0]
        for s in range(0, len(pts), 256):
            idx = pts[s:s + 256]
            o = p[idx][:, None, :]
            dd = d[None, None, :] if light_dir is not None else (lp - p[idx])[:, None, :]
            pvec = np.cross(dd, e2)
            det = np.sum(e1 * pvec, -1)
            ok = np.abs(det) > 1e-14
            inv = 1.0 / np.where(ok, det, 1.0)
            tvec = o - v0
            u = np.sum(tvec * pvec, -1) * inv
            qvec = np.cross(tvec, e1)
            w = np.sum(dd * qvec, -1) * inv
            t = np.sum(e2 * qvec, -1) * inv
            hit = ok & (u >= 0) & (w >= 0) & (u + w <= 1) & (t * np.linalg.norm(dd, axis=-1)
                                                             > t_min)
            if light_pos is not None:
                hit &= t < 1.0
            if exclude_radius > 0:
                dist = np.linalg.norm(tv[cand][None] - o[:, :, None, :], axis=-1).min(-1)
                hit &= dist >= exclude_radius
            out[idx] = np.where(hit.any(1), 0.0, 1.0)
    return out.reshape(shape)


def _away_from_boundaries(verts, tris, points, normals, ref, delta, local, light_dir=None,
                          light_pos=None, min_cos=0.1):
    """(...,) bool: points whose reference visibility is robust, i.e. not near

    * the attached-shadow terminator: ``n . l > min_cos``;
    * a contact shadow: the verdict is the same when triangles within ``local`` of the point
      are ignored;
    * a cast-shadow edge: moving the point by ``delta`` sideways (4 directions orthogonal to
      the light ray) does not change the verdict (triangles within ``local`` ignored, so the
      point's own surface does not count).
    """
    p = np.asarray(points, np.float64)
    kw = dict(light_dir=light_dir, light_pos=light_pos, exclude_radius=local)
    far = ray_visibility(verts, tris, p, **kw)
    if light_dir is not None:
        to_l = np.broadcast_to(np.asarray(light_dir, np.float64) / np.linalg.norm(light_dir),
                               p.shape)
    else:
        to_l = np.asarray(light_pos, np.float64) - p
        to_l = to_l / np.linalg.norm(to_l, axis=-1, keepdims=True)
    n = np.asarray(normals, np.float64)
    cos = np.sum(n * to_l, -1) / np.linalg.norm(n, axis=-1)
    keep = (cos > min_cos) & (far == ref)
    a = np.cross(to_l, np.eye(3)[np.argmin(np.abs(to_l).mean(axis=tuple(range(p.ndim - 1))))])
    a /= np.linalg.norm(a, axis=-1, keepdims=True)
    b = np.cross(to_l, a)
    for s in (delta * a, -delta * a, delta * b, -delta * b):
        keep &= ray_visibility(verts, tris, p + s, **kw) == ref
    return keep


# --------------------------------------------------------------------------------------------
# scenes
# --------------------------------------------------------------------------------------------


def _plane_scene(rng, n=16, half=50.0):
    """A tilted, shifted plane (2 n^2 triangles, side 2 half) with a square occluder 25 above it.

    Returns verts (V, 3), tris (F, 3), the plane's unit normal (3,), the plane-to-world
    rotation (3, 3) and offset (3,), and the number of plane vertices.
    """
    g = np.linspace(-half, half, n + 1)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    pv = np.stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)], 1)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    pt = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3),
                         np.stack([a, c, d], -1).reshape(-1, 3)])
    occ = np.array([[-20.0, -18, 25], [22, -18, 25], [22, 20, 25], [-20, 20, 25]])
    ot = np.array([[0, 1, 2], [0, 2, 3]]) + len(pv)
    verts = np.concatenate([pv, occ])
    tris = np.concatenate([pt, ot])
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    off = np.array([5.0, -10.0, 40.0])
    return (verts @ q.T + off).astype(np.float32), tris.astype(np.int32), q[:, 2], q, off, len(pv)


def _plane_points(rng, q, off, count, half=50.0):
    """Random points on the plane (world frame), float32."""
    uv = rng.uniform(-0.97 * half, 0.97 * half, size=(count, 2))
    return (np.concatenate([uv, np.zeros((count, 1))], 1) @ q.T + off).astype(np.float32)


# Compiling the rasteriser dominates this file's run time: shadow maps are built by one jitted
# function (cached per mesh shape, light type and map size), the cheap lookup by another.
map_fn = jax.jit(sd.shadow_map, static_argnames=("map_size", "margin"))
lookup_fn = jax.jit(sd.shadow_visibility, static_argnames=("pcf",))


def vis_fn(verts, tris, light, points, normals, map_size, **kw):
    return lookup_fn(map_fn(verts, tris, light, map_size=map_size), points, normals, **kw)


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directional", "point"])
def test_plane_with_occluder_matches_ray_casting(rng, kind):
    verts, tris, normal, q, off, _ = _plane_scene(rng)
    pts = _plane_points(rng, q, off, 2000)
    nrm = np.broadcast_to(normal, pts.shape).astype(np.float32)
    if kind == "directional":
        ldir = q @ np.array([0.5, -0.3, 1.0])
        light, kw = DirectionalLight(jnp.asarray(ldir, jnp.float32)), dict(light_dir=ldir)
    else:
        lpos = q @ np.array([10.0, -5.0, 80.0]) + off
        light, kw = PointLight(jnp.asarray(lpos, jnp.float32)), dict(light_pos=lpos)
    ref = ray_visibility(verts, tris, pts, **kw)
    away = _away_from_boundaries(verts, tris, pts, nrm, ref, delta=1.5, local=5.0, **kw)
    vis = np.asarray(vis_fn(verts, tris, light, pts, nrm, map_size=128))
    assert set(np.unique(vis)) <= {0.0, 1.0}
    # a real shadow, and most points are usable
    assert 0.1 < 1.0 - ref[away].mean() < 0.6 and away.mean() > 0.8
    agree = np.mean(vis[away] == ref[away])
    assert agree >= 0.98, agree
    # the occluder itself is lit (nothing above it); the plane's 4 corners are lit
    occ = np.asarray(verts[-4:])
    np.testing.assert_array_equal(vis_fn(verts, tris, light, occ, None, map_size=128), 1.0)
    # PCF: values are multiples of 1/9, equal to the binary test away from edges, and soft
    # (strictly between 0 and 1) on some points near the shadow edge
    vis3 = np.asarray(vis_fn(verts, tris, light, pts, nrm, map_size=128, pcf=3))
    np.testing.assert_allclose(vis3 * 9, np.round(vis3 * 9), atol=1e-5)
    assert np.mean(vis3[away] == ref[away]) >= 0.98
    soft = (vis3 > 0) & (vis3 < 1)
    assert soft.sum() > 0
    assert not np.any(soft & away & (np.abs(vis3 - ref) > 0.5))


def test_per_pixel_points_from_a_camera(rng):
    """(H, W, 3) points: the visible surface seen by a camera, in the camera frame."""
    verts, tris, normal, q, off, n_plane = _plane_scene(rng)
    eye = off + q @ np.array([30.0, -20.0, 150.0])
    r, t = look_at(jnp.asarray(eye, jnp.float32), jnp.asarray(off, jnp.float32))
    r, t = np.asarray(r), np.asarray(t)
    vc = (verts @ r.T + t).astype(np.float32)
    cam = default_camera((48, 64), 40.0)
    scr = to_screen(cam, jnp.asarray(vc))
    frags = rasterize(scr.xyz, jnp.asarray(tris), (48, 64), w=scr.w)
    covered = np.asarray(frags.mask)
    pts = np.asarray(interpolate(jnp.asarray(vc), frags, jnp.asarray(tris)))
    nrm = np.asarray(interpolate(vertex_normals(jnp.asarray(vc), jnp.asarray(tris)), frags,
                                 jnp.asarray(tris)))
    ldir = r @ q @ np.array([-0.4, 0.5, 1.0])
    vis = np.asarray(vis_fn(jnp.asarray(vc), tris, DirectionalLight(jnp.asarray(ldir)),
                            jnp.asarray(pts), jnp.asarray(nrm), map_size=128))
    assert vis.shape == (48, 64)
    ref = ray_visibility(vc, tris, pts[covered], light_dir=ldir)
    away = _away_from_boundaries(vc, tris, pts[covered], nrm[covered], ref, delta=1.5,
                                 local=5.0, light_dir=ldir)
    assert covered.mean() > 0.4 and 0.05 < 1 - ref[away].mean() < 0.6
    assert np.mean(vis[covered][away] == ref[away]) >= 0.98


@pytest.mark.parametrize("kind", ["directional", "point"])
def test_no_acne_on_a_lit_flat_plane(rng, kind):
    """A plane alone, lit at 70 degrees from its normal, is fully lit with the default bias
    (binary and PCF), at its vertices and anywhere inside; without bias, acne appears."""
    verts, tris, normal, q, off, n_plane = _plane_scene(rng)
    # remove the occluder by collapsing it onto a plane corner (zero-area triangles are
    # ignored by the rasteriser; the shapes stay those of the other tests: no recompilation)
    verts = verts.copy()
    verts[n_plane:] = verts[0]
    pts = np.concatenate([verts[:n_plane], _plane_points(rng, q, off, 4000)])
    nrm = np.broadcast_to(normal, pts.shape).astype(np.float32)
    slant = np.array([np.sin(np.radians(70.0)), 0.0, np.cos(np.radians(70.0))])
    if kind == "directional":
        light = DirectionalLight(jnp.asarray(q @ slant, jnp.float32))
    else:  # 70 degrees at the plane centre, 56 to 77 degrees across the plane
        light = PointLight(jnp.asarray(q @ (200.0 * slant) + off, jnp.float32))
    smap = map_fn(verts, tris, light, map_size=128)
    for pcf in (1, 3, 5):
        vis = np.asarray(lookup_fn(smap, pts, nrm, pcf=pcf))
        assert vis.min() == 1.0, (pcf, np.mean(vis < 1))
    no_bias = np.asarray(lookup_fn(smap, pts, nrm, constant_bias=0.0, slope_bias=0.0))
    assert np.mean(no_bias < 1) > 0.1


def test_vmap_over_lights_matches_loop(rng):
    verts, tris, normal, q, off, _ = _plane_scene(rng)
    pts = jnp.asarray(_plane_points(rng, q, off, 500))
    nrm = jnp.broadcast_to(jnp.asarray(normal, jnp.float32), pts.shape)
    dirs = jnp.asarray(np.stack([q @ np.array([s, -0.3, 1.0]) for s in (-0.6, 0.0, 0.7)]),
                       jnp.float32)
    pos = jnp.asarray(np.stack([q @ np.array([s, 5.0, 90.0]) + off for s in (-20.0, 0, 15)]),
                      jnp.float32)

    def one_dir(d):
        return sd.light_visibility(verts, tris, DirectionalLight(d), pts, nrm, 128, pcf=3)

    vb = np.asarray(jax.jit(jax.vmap(one_dir))(dirs))
    loop = [lookup_fn(map_fn(verts, tris, DirectionalLight(d), map_size=128), pts, nrm, pcf=3)
            for d in dirs]
    np.testing.assert_array_equal(vb, np.stack(loop))
    assert vb.shape == (3, 500) and len({vb[i].mean() for i in range(3)}) == 3
    # point lights: a batched ShadowMap (leading axis on its array leaves), then the lookup
    maps = jax.jit(jax.vmap(lambda p: sd.point_shadow_map(verts, tris, p, 128)))(pos)
    assert maps.depth.shape == (3, 128, 128) and maps.rotation.shape == (3, 3, 3)
    vb = np.asarray(jax.vmap(lambda m: sd.shadow_visibility(m, pts, nrm))(maps))
    loop = [lookup_fn(map_fn(verts, tris, PointLight(p), map_size=128), pts, nrm) for p in pos]
    np.testing.assert_array_equal(vb, np.stack(loop))
    assert vb.shape == (3, 500) and len({vb[i].mean() for i in range(3)}) == 3


def test_gradients_through_shadowed_phong_are_finite_and_match_fd(rng):
    """Visibility is piecewise constant: it passes no gradient, and the shading gradient wrt
    the points and the albedo (visibility looked up inside) matches finite differences."""
    verts, tris, normal, q, off, _ = _plane_scene(rng)
    pts = _plane_points(rng, q, off, 64)
    nrm = np.broadcast_to(normal, pts.shape).astype(np.float32)
    light = PointLight(jnp.asarray(q @ np.array([10.0, -5.0, 80.0]) + off, jnp.float32),
                       attenuation=(1.0, 0.01, 0.0))
    eye = jnp.asarray(off + q @ np.array([0.0, 0.0, 200.0]), jnp.float32)
    alb0 = jnp.asarray(rng.uniform(0.2, 0.9, size=(64, 3)), jnp.float32)
    smap = map_fn(verts, tris, light, map_size=128)

    @jax.jit
    def loss(p, alb):
        v = sd.shadow_visibility(smap, p, nrm, pcf=3)
        return jnp.sum(shade_phong(alb, p, nrm, eye, [light], visibility=[v]) ** 2), v

    (_, v), (gp, ga) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        jnp.asarray(pts), alb0)
    assert np.all(np.isfinite(gp)) and np.all(np.isfinite(ga))
    v = np.asarray(v)
    assert v.min() == 0.0 and v.max() == 1.0  # some points shadowed, some lit
    # visibility itself has a zero derivative
    gv = jax.grad(lambda p: jnp.sum(sd.shadow_visibility(smap, p, nrm, pcf=3)))(
        jnp.asarray(pts))
    np.testing.assert_array_equal(gv, 0.0)
    # central differences wrt the points, moving only points off the PCF edges (a 0.05 mm
    # step leaves their visibility unchanged); float32, hence the loose tolerance
    move = jnp.asarray((v == 0) | (v == 1), jnp.float32)[:, None]
    dp = jnp.asarray(rng.normal(size=pts.shape), jnp.float32) * move
    h = 0.05
    fd = (loss(jnp.asarray(pts) + h * dp, alb0)[0] - loss(jnp.asarray(pts) - h * dp, alb0)[0])
    fd = float(fd) / (2 * h)
    assert abs(fd - float(jnp.sum(gp * dp))) < 2e-2 * abs(fd) + 1e-3, (fd, jnp.sum(gp * dp))
    # the albedo: central difference
    da = jnp.asarray(rng.normal(size=(64, 3)), jnp.float32)
    fda = (loss(jnp.asarray(pts), alb0 + 1e-2 * da)[0]
           - loss(jnp.asarray(pts), alb0 - 1e-2 * da)[0]) / 2e-2
    np.testing.assert_allclose(float(fda), float(jnp.sum(ga * da)), rtol=1e-3)
    # fully shadowed points receive nothing from this light (no ambient term here)
    np.testing.assert_array_equal(np.asarray(ga)[v == 0], 0.0)


def test_phong_visibility_multiplier():
    n = jnp.asarray([[0.0, 0.0, 1.0]] * 3)
    p = jnp.zeros((3, 3))
    lights = [DirectionalLight(jnp.asarray([0.0, 0.6, 0.8])),
              PointLight(jnp.asarray([0.0, 0.0, 10.0]), intensity=0.5)]
    one = [shade_phong(0.5, p, n, jnp.asarray([0.0, 0.0, 5.0]), [lt], ambient=0.0)
           for lt in lights]
    vis = [jnp.asarray([0.0, 0.5, 1.0]), None]
    both = shade_phong(0.5, p, n, jnp.asarray([0.0, 0.0, 5.0]), lights, visibility=vis)
    np.testing.assert_allclose(both, one[0] * vis[0][:, None] + one[1], rtol=1e-6)
    with pytest.raises(ValueError, match="one entry per light"):
        shade_phong(0.5, p, n, jnp.zeros(3), lights, visibility=[None])


def test_ict_nose_shadow_on_cheek_matches_ray_casting(data_dir):
    """The default ICT head lit from its side: the nose shadows the far cheek."""
    model = load_default()
    v = np.asarray(model.mean, np.float32).reshape(-1, 3)
    tris = np.asarray(model.triangles)
    nrm = np.asarray(vertex_normals(jnp.asarray(v), jnp.asarray(tris)))
    ldir = np.array([-1.0, 0.15, 0.35])  # model frame: from the face's side, slightly ahead
    face = np.nonzero(np.asarray(model.regions["face"]))[0]
    sel = np.random.default_rng(1).choice(face, 2500, replace=False)
    pts = v[sel]
    vis = np.asarray(vis_fn(v, tris, DirectionalLight(jnp.asarray(ldir, jnp.float32)), pts,
                            nrm[sel], map_size=256))
    ref = ray_visibility(v, tris, pts, light_dir=ldir)
    # texels are 1.4 mm here (the whole head, about 340 mm across as seen by the light, on 256)
    away = _away_from_boundaries(v, tris, pts, nrm[sel], ref, delta=2.5, local=7.5,
                                 light_dir=ldir)
    assert away.sum() > 800  # about half of the face faces away from this light
    assert 0.1 < 1.0 - ref[away].mean() < 0.9
    agree = np.mean(vis[away] == ref[away])
    assert agree >= 0.98, agree
    # the nose's cast shadow: cheek points on the far side of the nose (+x: away from the
    # light, which comes from -x), in front of the nose base and facing the light, in shadow
    tip = v[int(np.asarray(model.landmarks["ibug68"].indices)[30, 0])]
    cheek = ((pts[:, 0] > tip[0] + 8) & (pts[:, 0] < tip[0] + 35)
             & (np.abs(pts[:, 1] - tip[1]) < 15) & (nrm[sel] @ ldir > 0.1))
    assert cheek.sum() > 10
    assert np.mean(vis[cheek] == 0) > 0.5 and np.mean(ref[cheek] == 0) > 0.5


def _quad(x0, x1, y0, y1, z):
    """Two triangles facing the camera (normal -z, towards the origin) at depth ``z``."""
    v = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], np.float32)
    return v, np.array([[0, 2, 1], [0, 3, 2]], np.int32)


def test_render_mesh_with_shadowed_phong_lights():
    """A ground plane at z = 600 mm and a 40 mm square occluder at z = 500 mm, lit by a
    directional light tilted 16.7 deg towards +x: the occluder's shadow lands 30 mm towards
    -x on the ground (analytic footprint x in [-50, -10], y in [-20, 20] mm), partly hidden
    behind the occluder. ``PhongLighting(shadows=True)`` must darken exactly that, and
    nothing without shadows."""
    from jaxface.camera import PerspectiveCamera
    from jaxface.render.pipeline import render_mesh
    from jaxface.render.shading import DirectionalLight, PhongLighting

    g, gt = _quad(-150, 150, -150, 150, 600.0)
    o, ot = _quad(-20, 20, -20, 20, 500.0)
    verts = jnp.asarray(np.concatenate([g, o]))
    tris = np.concatenate([gt, ot + 4])
    cam = PerspectiveCamera(fx=500.0, fy=500.0, cx=64.0, cy=64.0)
    light = DirectionalLight(direction=jnp.array([0.3, 0.0, -1.0]))
    kw = dict(albedo=jnp.full((8, 3), 0.8))
    lit_val = 0.1 * 0.8 + 0.8 / np.sqrt(1.09)

    def shade(shadows):
        ph = PhongLighting(lights=(light,), ambient=0.1, shadows=shadows, shadow_map_size=256,
                           shadow_pcf=1)
        return np.asarray(jax.jit(lambda v: render_mesh(v, tris, cam, (128, 128), phong=ph,
                                                         **kw).rgb)(verts))[..., 0]

    lit, shadowed = shade(False), shade(True)
    u = np.arange(128) + 0.5
    uu, vv = np.meshgrid(u, u)
    gx, gy = (uu - 64) * 600 / 500, (vv - 64) * 600 / 500  # ground points behind each pixel
    on_occluder = (np.abs(uu - 64) < 20 * 500 / 500) & (np.abs(vv - 64) < 20)
    in_shadow = (gx > -50) & (gx < -10) & (np.abs(gy) < 20) & ~on_occluder
    # 2 px away from the footprint's and the occluder's outlines (map texels, soft edges)
    core = (gx > -50 + 3) & (gx < -10 - 3) & (np.abs(gy) < 20 - 3) & (uu < 64 - 20 - 2)
    clear = ~((gx > -50 - 3) & (gx < -10 + 3) & (np.abs(gy) < 20 + 3)) & ~on_occluder
    clear &= ~((np.abs(uu - 64) < 22) & (np.abs(vv - 64) < 22))
    assert core.sum() > 150
    np.testing.assert_allclose(lit[in_shadow | clear], lit_val, atol=0.02)
    np.testing.assert_allclose(shadowed[core], 0.1 * 0.8, atol=0.02)
    np.testing.assert_allclose(shadowed[clear], lit_val, atol=0.02)
    occ = on_occluder & (np.abs(uu - 64) < 18) & (np.abs(vv - 64) < 18)
    np.testing.assert_allclose(shadowed[occ], lit_val, atol=0.02)  # the occluder is lit
    # gradients through the shadowed shading stay finite
    ph = PhongLighting(lights=(light,), ambient=0.1, shadows=True, shadow_map_size=64)
    grad = jax.grad(lambda v: jnp.sum(render_mesh(v, tris, cam, (32, 32), phong=ph,
                                                  **kw).rgb))(verts)
    assert np.isfinite(np.asarray(grad)).all()
    # the soft path shades (and shadows) per vertex
    soft = render_mesh(verts, tris, cam, (32, 32), phong=ph, mode="soft", **kw).rgb
    assert np.isfinite(np.asarray(soft)).all() and float(soft.max()) > 0.5
