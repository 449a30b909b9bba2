# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Synthetic contrast-enhanced abdominal CT phantom in BTCV layout.

The phantom is the embedded default data set of ``monai_fine``: the demo, the tests and the context benchmark run on
it without any download. Each case is a 3D CT volume in Hounsfield units with a 14-class BTCV label map
(0 background, 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver, 7 stomach, 8 aorta,
9 inferior vena cava, 10 portal and splenic vein, 11 pancreas, 12 right adrenal gland, 13 left adrenal gland) and a
RAS+ affine: array axis 0 runs towards the patient's Right, axis 1 towards Anterior, axis 2 towards Superior
(``nibabel.aff2axcodes(affine) == ("R", "A", "S")``), like the BTCV and TotalSegmentator scans in NIfTI.

Anatomy is defined in millimetres in a patient frame centred on the body midline (x > 0 = patient's right,
y > 0 = anterior, z = 0 near the renal hila) and is drawn as deformed ellipsoids and tubes. Two properties make it a
test of context rather than of local appearance:

* the left/right twins (kidneys 2/3, adrenal glands 12/13) are exact mirror images about the body midline, with the
  same intensity and texture and the same fat capsule, so only their position or their neighbours tell them apart;
* the liver and the spleen have the same intensity, so only their shape, size and position tell them apart.

With ``situs_inversus=True`` the whole organ arrangement is mirrored (liver and gallbladder on the patient's left,
spleen and stomach on the right, heart apex on the right) while every label keeps its meaning: the liver is still
label 6, and label 2 / 12 are still the kidney / adrenal on the liver's side, which now lies on the patient's left.
This is a benchmark convention, not a clinical naming rule.

Per-case variation: body size and fat thickness, in-plane position, the cranio-caudal field of view (organs may be
cut at the volume edge or missing), organ position/size/shape, contrast enhancement, and Gaussian noise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import interpolate, ndimage, spatial

from monai_fine.labels import BTCV_LABELS

__all__ = ["BTCV_LABELS", "PHANTOM", "PhantomProtocol", "make_phantom_case", "make_phantom_dataset", "phantom"]


@dataclass(frozen=True)
class PhantomProtocol:
    """The phantom's standard protocol: what the demo, the experiments, the benchmarks and the tests at demo scale
    draw and train on, defined once.

    Attributes:
        shape: volume size in voxels ``(X, Y, Z)``.
        spacing: voxel size in mm (also the training ``pixdim``: the phantom needs no resampling).
        roi_size: the training crop and inference window in voxels (``PRESETS["tiny"]["roi_size"]``).
    """

    shape: tuple[int, int, int] = (96, 96, 64)
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    roi_size: tuple[int, int, int] = (32, 32, 16)


#: The phantom protocol.
PHANTOM = PhantomProtocol()


# Nominal size (mm, half axes) of the abdominal cavity and of the muscle wall around it; the subcutaneous fat varies.
_CAVITY = (108.0, 80.0)
_WALL = 8.0
_SUPERELLIPSE = 2.5
# Field of view (mm) that the nominal body fits into; smaller fields of view shrink the whole patient to fit.
_FIT_FOV = (290.0, 235.0)
# Cranio-caudal centre (mm, patient frame) of an unjittered field of view: the lower kidney poles to the liver dome.
_Z_CENTRE = 45.0


def _rotation(rx: float = 0.0, ry: float = 0.0, rz: float = 0.0) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx (degrees) whose columns are the local axes in the patient frame."""
    ax, ay, az = np.deg2rad([rx, ry, rz])
    rot_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rot_y = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rot_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


@dataclass
class _Blob:
    """Ellipsoid with a low-frequency surface deformation and an optional notch (kidney hilum)."""

    center: np.ndarray  # (3,) mm
    radii: np.ndarray  # (3,) mm
    rotation: np.ndarray  # (3, 3), columns = local axes
    waves: np.ndarray  # (K, 3) spatial frequencies in normalised local units
    phases: np.ndarray  # (K,)
    amps: np.ndarray  # (K,)
    notch: tuple[np.ndarray, np.ndarray] | None = None  # (centre, radii) in normalised local units

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.sqrt(((self.rotation * self.radii[None, :]) ** 2).sum(1)) * np.sqrt(1.0 + self.amps.sum())
        return self.center - half, self.center + half

    def grown(self, margin: float) -> _Blob:
        """The same blob with every radius grown by ``margin`` mm (a fat capsule around it)."""
        return _Blob(self.center, self.radii + margin, self.rotation, self.waves, self.phases, self.amps)

    def mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        d = (x - self.center[0], y - self.center[1], z - self.center[2])
        u = [sum(self.rotation[j, i] * d[j] for j in range(3)) / self.radii[i] for i in range(3)]
        f = u[0] ** 2 + u[1] ** 2 + u[2] ** 2
        for w, p, a in zip(self.waves, self.phases, self.amps):
            f = f + a * np.sin(w[0] * u[0] + w[1] * u[1] + w[2] * u[2] + p)
        inside = f < 1.0
        if self.notch is not None:
            c, r = self.notch
            inside &= ((u[0] - c[0]) / r[0]) ** 2 + ((u[1] - c[1]) / r[1]) ** 2 + ((u[2] - c[2]) / r[2]) ** 2 > 1.0
        return inside


@dataclass
class _Tube:
    """Tube of varying radius around a smooth curve through control points (vessels, esophagus, pancreas)."""

    samples: np.ndarray  # (S, 3) points on the curve, about 1 mm apart
    radius: np.ndarray  # (S,)

    @classmethod
    def through(cls, points: Sequence[Sequence[float]], radii: Sequence[float]) -> _Tube:
        pts = np.asarray(points, dtype=float)
        t = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        spline = interpolate.make_interp_spline(t, np.column_stack([pts, radii]), k=min(3, len(pts) - 1))
        values = spline(np.linspace(0.0, t[-1], max(int(t[-1]), 2) + 1))
        return cls(values[:, :3], np.maximum(values[:, 3], 0.5))

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.radius.max()
        return self.samples.min(0) - r, self.samples.max(0) + r

    def mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        x, y, z = np.broadcast_arrays(x, y, z)
        dist, idx = spatial.cKDTree(self.samples).query(np.column_stack([x.ravel(), y.ravel(), z.ravel()]))
        return (dist < self.radius[idx]).reshape(x.shape)


class _Scene:
    """Voxel grid of one case, painted in patient-frame millimetres (``xa``, ``ya``, ``za`` are open 1D grids)."""

    def __init__(self, xa: np.ndarray, ya: np.ndarray, za: np.ndarray) -> None:
        self.xa, self.ya, self.za = xa, ya, za
        shape = (xa.size, ya.size, za.size)
        self.image = np.full(shape, -1000.0, dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)
        self.texture = np.zeros(shape, dtype=np.float32)
        self.cavity = np.zeros(shape, dtype=bool)

    def grid(self, sl: tuple[slice, slice, slice] = (slice(None),) * 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.xa[sl[0]][:, None, None], self.ya[sl[1]][None, :, None], self.za[sl[2]][None, None, :]

    def paint(
        self,
        shape: _Blob | _Tube,
        hu: float,
        label: int | None = None,
        texture: float = 0.0,
        mirror: bool = False,
        clip: bool = True,
        where: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """Set the voxels inside ``shape`` (mirrored left/right if ``mirror``) to ``hu`` and ``label``."""
        lo, hi = shape.extent()
        if mirror:
            lo, hi = lo.copy(), hi.copy()
            lo[0], hi[0] = -hi[0], -lo[0]
        sl = []
        for coord, a, b in zip((self.xa, self.ya, self.za), lo, hi):
            idx = np.flatnonzero((coord >= a) & (coord <= b))
            if idx.size == 0:
                return
            sl.append(slice(int(idx.min()), int(idx.max()) + 1))
        region = (sl[0], sl[1], sl[2])
        x, y, z = self.grid(region)
        inside = shape.mask(-x if mirror else x, y, z)
        if where is not None:
            inside = inside & where(-x if mirror else x, y, z)
        if clip:
            inside &= self.cavity[region]
        values = np.broadcast_to(hu + texture * self.texture[region], inside.shape)
        self.image[region][inside] = values[inside]
        if label is not None:
            self.label[region][inside] = label


def _superellipse(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    return (np.abs(x) / a) ** _SUPERELLIPSE + (np.abs(y) / b) ** _SUPERELLIPSE < 1.0


def _symmetric_texture(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray, terms: int) -> np.ndarray:
    """Smooth random field of about unit std (wavelengths 20-60 mm) that is even in x, i.e. mirror symmetric."""
    field = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=np.float32)
    for _ in range(terms):
        k = rng.normal(size=3)
        k *= 2 * np.pi / rng.uniform(20.0, 60.0) / np.linalg.norm(k)
        field += (np.cos(k[0] * x) * np.cos(k[1] * y + k[2] * z + rng.uniform(0, 2 * np.pi))).astype(np.float32)
    return field * np.float32(2.0 / np.sqrt(terms))


class _Anatomy:
    """Random draw of the organ geometry of one case (patient frame, mm, normal situs, right-side twins)."""

    def __init__(self, rng: np.random.Generator, variability: float) -> None:
        self.rng, self.var = rng, variability

    def jitter(self, center: Sequence[float], sd: float = 4.0) -> np.ndarray:
        return np.asarray(center, dtype=float) + self.var * self.rng.normal(0.0, sd, size=3)

    def blob(
        self, center: Sequence[float], radii: Sequence[float], rot: Sequence[float] = (0, 0, 0), **kwargs: Any
    ) -> _Blob:
        rng, v = self.rng, self.var
        waves = rng.normal(size=(3, 3))
        waves *= (rng.uniform(1.5, 3.0, size=3) / np.linalg.norm(waves, axis=1))[:, None]
        return _Blob(
            center=self.jitter(center),
            radii=np.asarray(radii, dtype=float) * (1.0 + v * rng.uniform(-0.1, 0.1, size=3)),
            rotation=_rotation(*(np.asarray(rot, dtype=float) + v * rng.uniform(-8.0, 8.0, size=3))),
            waves=waves,
            phases=rng.uniform(0, 2 * np.pi, size=3),
            amps=v * rng.uniform(0.03, 0.08, size=3),
            **kwargs,
        )

    def tube(self, points: Sequence[Sequence[float]], radii: Sequence[float], sd: float = 3.0) -> _Tube:
        pts = np.asarray(points, dtype=float) + self.var * self.rng.normal(0.0, sd, size=(len(points), 3))
        return _Tube.through(pts, np.asarray(radii, dtype=float) * (1.0 + self.var * self.rng.uniform(-0.1, 0.1)))


def _draw_case(
    shape: Sequence[int],
    spacing: Sequence[float],
    rng: np.random.Generator,
    situs_inversus: bool,
    noise_std: float | None,
    variability: float,
    z_jitter_mm: float,
    partial_volume: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    nx, ny, nz = (int(n) for n in shape)
    sx, sy, sz = (float(s) for s in spacing)
    v = float(variability)
    lr = -1.0 if situs_inversus else 1.0

    # Patient scale and placement. The body midline sits on a voxel centre or a voxel border, so that the left/right
    # mirror maps voxel centres onto voxel centres and the twins are exact mirror images on the grid.
    fit = min(1.0, nx * sx / _FIT_FOV[0], ny * sy / _FIT_FOV[1])
    scale = fit * (1.0 + v * rng.uniform(-0.08, 0.08))
    shift = v * rng.uniform(-12.0, 12.0, size=2) * fit
    mid2 = round((nx - 1) + 2.0 * shift[0] / sx)  # twice the midline voxel index
    x0, y0 = -(nx - 1) / 2.0 * sx, -(ny - 1) / 2.0 * sy
    body_y = shift[1]
    z_centre = _Z_CENTRE + v * rng.uniform(-z_jitter_mm, z_jitter_mm)
    z0 = scale * z_centre - (nz - 1) / 2.0 * sz
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = (x0, y0, z0)

    xa = lr * (2 * np.arange(nx) - mid2) * sx / (2.0 * scale)
    ya = (y0 + np.arange(ny) * sy - body_y) / scale
    za = (z0 + np.arange(nz) * sz) / scale
    scene = _Scene(xa, ya, za)
    x, y, z = scene.grid()

    # Body: subcutaneous fat, muscle wall, abdominal cavity filled with a mesenteric fat / soft-tissue mixture.
    fat = 18.0 + v * rng.uniform(-10.0, 12.0)
    ca, cb = _CAVITY
    body = np.broadcast_to(_superellipse(x, y, ca + _WALL + fat, cb + _WALL + fat), scene.image.shape)
    wall = _superellipse(x, y, ca + _WALL, cb + _WALL) & body
    scene.cavity = np.broadcast_to(_superellipse(x, y, ca, cb), body.shape).copy()
    scene.image[body] = -100.0
    scene.image[wall] = 50.0
    white = rng.standard_normal(scene.image.shape, dtype=np.float32)
    blobs = ndimage.gaussian_filter(white, [6.0 / s for s in spacing])  # fat/soft-tissue islands of about 1-2 cm
    blobs /= max(float(blobs.std()), 1e-6)
    mix = 1.0 / (1.0 + np.exp(-3.0 * (blobs + 0.3)))
    scene.image[scene.cavity] = (-90.0 * mix + 30.0 * (1.0 - mix))[scene.cavity]
    scene.texture = _symmetric_texture(rng, x, y, z, 6)

    a = _Anatomy(rng, v)
    contrast = 1.0 + v * rng.uniform(-0.15, 0.15)

    def enhanced(base: float) -> float:
        return 40.0 + contrast * (base - 40.0) + v * rng.uniform(-8.0, 8.0)

    # Background structures (label 0).
    paraspinal = ((np.abs(x) - 35.0) / 28.0) ** 2 + ((y + 92.0) / 15.0) ** 2 < 1.0
    scene.image[body & paraspinal] = 50.0
    for side in (1, -1):
        scene.paint(a.blob((side * 72, -15, 215), (62, 75, 105)), -850.0, texture=15.0)  # lung bases
    scene.paint(a.blob((-15, 25, 215), (60, 50, 55)), 130.0, texture=5.0)  # heart
    for _ in range(int(rng.integers(8, 15))):  # bowel loops: fluid, gas or both with a gas-fluid level
        loop = a.blob((rng.uniform(-85, 85), rng.uniform(-5, 60), rng.uniform(-140, 15)), rng.uniform(10, 20, size=3))
        kind = rng.uniform()
        scene.paint(loop, -900.0 if kind < 0.3 else 15.0, texture=5.0)
        if kind > 0.75:
            level = loop.center[1] + rng.uniform(-0.3, 0.5) * loop.radii[1]
            scene.paint(loop, -900.0, where=lambda xx, yy, zz, lv=level: yy > lv)
    psoas = a.tube([(38, -45, -140), (32, -48, -40), (26, -52, 40)], [26, 20, 8])
    for side in (1, -1):
        scene.paint(psoas, 50.0, texture=4.0, mirror=side < 0)
    scene.paint(a.tube([(-4, -8, 240), (-6, -6, 160), (-14, 0, 120)], [16, 16, 16]), -90.0)  # fat around esophagus

    # Organs in painting order: a later organ overrides an earlier one where they overlap.
    liver_hu = enhanced(100.0)  # the spleen gets exactly the same intensity on purpose
    liver_right = a.blob((55, 5, 75), (52, 70, 62), (0, 0, 10))
    liver_left = a.blob((-5, 50, 92), (45, 24, 36), (0, 0, -15))
    scene.paint(liver_right, liver_hu, 6, texture=6.0)
    scene.paint(liver_left, liver_hu, 6, texture=6.0)
    scene.paint(a.blob((-75, -25, 78), (20, 50, 48), (0, 0, 30)), liver_hu, 1, texture=6.0)
    esophagus = a.tube([(-4, -8, 240), (-6, -6, 160), (-14, 0, 120), (-32, 16, 92)], [8, 8, 8, 9], sd=2.0)
    scene.paint(esophagus, enhanced(40.0), 5, texture=4.0)
    stomach = a.blob((-45, 22, 65), (36, 30, 52), (0, -25, 0))
    scene.paint(stomach, 20.0, 7, texture=4.0)
    gas_level = stomach.center[1] + stomach.radii[1] * (0.2 + 0.5 * rng.uniform())
    scene.paint(stomach, -900.0, where=lambda xx, yy, zz: yy > gas_level)
    scene.paint(a.blob((38, 48, 22), (14, 14, 30), (30, 0, 0)), 10.0, 4, texture=2.0)
    pancreas = a.tube([(30, 10, 8), (10, 16, 18), (-20, 12, 28), (-50, 2, 36), (-66, -8, 44)], [16, 12, 11, 10, 8])
    scene.paint(pancreas, enhanced(90.0), 11, texture=6.0)
    vein_hu = enhanced(180.0)
    splenic = a.tube([(-66, -14, 50), (-40, -4, 36), (-10, 4, 27), (8, 10, 25)], [5, 5, 6, 7], sd=2.0)
    portal = a.tube([(8, 10, 25), (28, 16, 42), (45, 16, 58)], [7, 7, 6], sd=2.0)
    scene.paint(splenic, vein_hu, 10, texture=4.0)
    scene.paint(portal, vein_hu, 10, texture=4.0)
    ivc = a.tube([(20, -20, -140), (21, -18, 0), (22, -15, 60), (16, -5, 120), (10, 5, 160)], [11, 11, 11, 12, 13])
    scene.paint(ivc, enhanced(175.0), 9, texture=4.0)
    aorta = a.tube(
        [(-14, -24, -140), (-13, -24, 0), (-12, -24, 90), (-16, -32, 160), (-20, -30, 240)], [10, 11, 11, 12, 12]
    )
    scene.paint(aorta, enhanced(185.0), 8, texture=4.0)

    # Twins: drawn once on the patient's right and mirrored, each inside the same fat capsule.
    kidney = a.blob(
        (66, -44, 5), (30, 22, 55), (0, -12, -35), notch=(np.array([-1.0, 0.0, 0.0]), np.array([0.45, 0.35, 0.4]))
    )
    adrenal = a.blob((46, -36, 68), (5, 13, 17), (0, 0, 10))
    kidney_hu, adrenal_hu = enhanced(150.0), enhanced(40.0)
    for side in (1, -1):
        scene.paint(kidney.grown(8.0), -90.0, 0, mirror=side < 0)
        scene.paint(adrenal.grown(6.0), -90.0, 0, mirror=side < 0)
    for side, label in ((1, 2), (-1, 3)):
        scene.paint(kidney, kidney_hu, label, texture=6.0, mirror=side < 0)
    for side, label in ((1, 12), (-1, 13)):
        scene.paint(adrenal, adrenal_hu, label, texture=3.0, mirror=side < 0)

    # Bone (label 0): vertebral bodies and discs, posterior arches, lower ribs in the muscle wall.
    ax_, ay_ = np.abs(x), y
    level = np.mod(z - rng.uniform(0, 32.0), 32.0) > 8.0  # vertebra (True) or disc (False)
    vbody = np.broadcast_to((ax_ / 22.0) ** 2 + ((ay_ + 58.0) / 17.0) ** 2 < 1.0, body.shape)
    vcore = (ax_ / 19.0) ** 2 + ((ay_ + 58.0) / 14.0) ** 2 < 1.0
    canal = (ax_ / 9.0) ** 2 + ((ay_ + 84.0) / 9.0) ** 2 < 1.0
    arch = ((ax_ / 17.0) ** 2 + ((ay_ + 84.0) / 16.0) ** 2 < 1.0) & ~canal
    spinous = (ax_ < 4.0) & (ay_ < -95.0) & (ay_ > -112.0)
    transverse = (ax_ > 15.0) & (ax_ < 36.0) & (ay_ > -79.0) & (ay_ < -73.0)
    posterior = (arch | spinous | transverse) & level & body
    scene.image[vbody] = np.where(level, np.where(vcore, 250.0, 700.0), 90.0)[vbody]
    scene.image[posterior] = 700.0
    canal3 = np.broadcast_to(canal, body.shape)
    scene.image[canal3] = 15.0
    angle = np.arctan2(ay_, ax_)
    ribs = (
        _superellipse(x, y, ca + 6.0, cb + 6.0)
        & ~_superellipse(x, y, ca + 1.0, cb + 1.0)
        & (np.mod(z + 25.0 * np.sin(angle), 30.0) < 7.0)
        & (z > 25.0)
        & (y < 35.0)
    )
    scene.image[ribs] = 500.0
    scene.label[vbody | posterior | canal3 | ribs] = 0

    image = scene.image
    if partial_volume > 0:
        image = ndimage.gaussian_filter(image, sigma=partial_volume, mode="nearest")
    sigma = rng.uniform(10.0, 20.0) if noise_std is None else float(noise_std)
    if sigma > 0:
        image = image + rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
    image = np.clip(image, -1024.0, 3071.0).astype(np.float32)

    meta = {
        "situs_inversus": bool(situs_inversus),
        "scale": float(scale),
        "midline_x_mm": float(x0 + mid2 * sx / 2.0),
        "body_y_mm": float(body_y),
        "z_range_mm": [float(za[0]), float(za[-1])],
        "noise_std": float(sigma),
    }
    return image, scene.label, affine, meta


def make_phantom_case(
    shape: Sequence[int] = PHANTOM.shape,
    spacing: Sequence[float] = PHANTOM.spacing,
    seed: int | None = 0,
    situs_inversus: bool = False,
    noise_std: float | None = None,
    variability: float = 1.0,
    z_jitter_mm: float = 40.0,
    partial_volume: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one synthetic abdominal CT case.

    Args:
        shape: volume size ``(X, Y, Z)`` in voxels (RAS array order).
        spacing: voxel size in mm along ``(X, Y, Z)``. The nominal body is about 270 x 215 mm in-plane; an in-plane
            field of view (``shape * spacing``) smaller than 290 x 235 mm shrinks the whole patient to fit.
        seed: seed of the case; the same seed gives the same arrays.
        situs_inversus: mirror the organ arrangement left/right; labels keep their anatomical meaning.
        noise_std: standard deviation of the Gaussian noise in HU; ``None`` draws it in [10, 20], 0 gives none.
        variability: multiplies every geometric and intensity variation between cases (body size and position,
            field of view, organ placement and shape, contrast); 0 gives the mean anatomy.
        z_jitter_mm: at ``variability=1``, the cranio-caudal centre of the field of view moves by up to this many mm
            (patient frame), so organs can be cut or missing at the volume edge. 0 centres it on the abdomen.
        partial_volume: standard deviation (voxels) of a Gaussian blur applied before the noise; 0 disables it.

    Returns:
        ``(image, label, affine)``: float32 HU volume of ``shape``, uint8 BTCV label map (0..13) of ``shape``, and a
        4x4 RAS+ voxel-to-world affine in mm (``nibabel.aff2axcodes(affine) == ("R", "A", "S")``).

    Raises:
        ValueError: if ``shape`` or ``spacing`` do not have three positive entries.
    """
    image, label, affine, _ = _make_case(
        shape, spacing, seed, situs_inversus, noise_std, variability, z_jitter_mm, partial_volume
    )
    return image, label, affine


def _make_case(
    shape: Sequence[int],
    spacing: Sequence[float],
    seed: int | None,
    situs_inversus: bool,
    noise_std: float | None = None,
    variability: float = 1.0,
    z_jitter_mm: float = 40.0,
    partial_volume: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (X, Y, Z), got {tuple(shape)}.")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive voxel sizes in mm, got {tuple(spacing)}.")
    rng = np.random.default_rng(seed)
    return _draw_case(shape, spacing, rng, situs_inversus, noise_std, variability, z_jitter_mm, partial_volume)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, dtype: type) -> None:
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def make_phantom_dataset(
    out_dir: str | Path,
    num_cases: int = 12,
    seed: int = 0,
    shape: Sequence[int] = PHANTOM.shape,
    spacing: Sequence[float] = PHANTOM.spacing,
    num_test: int = 2,
    val_fraction: float = 0.2,
    situs_inversus_fraction: float = 0.0,
    **case_kwargs: Any,
) -> Path:
    """Write a phantom data set in BTCV / Medical Segmentation Decathlon layout.

    Files: ``imagesTr/case_XXXX.nii.gz`` (int16 HU) and ``labelsTr/case_XXXX.nii.gz`` (uint8) for the labelled cases,
    ``imagesTs/case_XXXX.nii.gz`` for the test cases (image only), and ``dataset_0.json`` with paths relative to
    ``out_dir``: ``training`` and ``validation`` (disjoint labelled cases; validation is the last cases), ``test``
    (images only), ``labels``, ``numTraining`` / ``numValidation`` / ``numTest``, ``situs_inversus`` (the case names
    drawn mirrored) and ``phantom`` (generator settings and per-case scale and field of view).

    Args:
        out_dir: output folder, created if needed; existing files with the same names are overwritten.
        num_cases: number of labelled cases (training + validation).
        seed: data set seed; the same seed writes the same data.
        shape: volume size of every case in voxels.
        spacing: voxel size in mm.
        num_test: number of additional unlabelled test cases.
        val_fraction: fraction of the labelled cases put in ``validation`` (at least one when ``num_cases >= 2``
            and ``val_fraction > 0``).
        situs_inversus_fraction: fraction of the cases of each split drawn with ``situs_inversus=True``.
        case_kwargs: further arguments of :func:`make_phantom_case` (``noise_std``, ``variability``, ...).

    Returns:
        Path of the written ``dataset_0.json``.

    Raises:
        ValueError: for a negative number of cases or a fraction outside [0, 1].
    """
    if num_cases < 1 or num_test < 0:
        raise ValueError(f"num_cases must be >= 1 and num_test >= 0, got {num_cases} and {num_test}.")
    for name, frac in (("val_fraction", val_fraction), ("situs_inversus_fraction", situs_inversus_fraction)):
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {frac}.")
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    num_val = int(np.floor(val_fraction * num_cases + 0.5))
    if val_fraction > 0 and num_cases >= 2:
        num_val = min(max(num_val, 1), num_cases - 1)
    elif num_cases < 2:
        num_val = 0
    names = [f"case_{i:04d}" for i in range(num_cases + num_test)]
    splits = {
        "training": names[: num_cases - num_val],
        "validation": names[num_cases - num_val : num_cases],
        "test": names[num_cases:],
    }
    seq = np.random.SeedSequence(seed)
    split_rng = np.random.default_rng(seq.spawn(1)[0])
    situs: set[str] = set()
    for members in splits.values():
        k = int(np.floor(situs_inversus_fraction * len(members) + 0.5))
        if k:
            situs.update(str(n) for n in split_rng.choice(members, size=k, replace=False))
    case_seeds = [int(s.generate_state(1)[0]) for s in seq.spawn(len(names) + 1)[1:]]

    per_case: dict[str, Any] = {}
    for name, case_seed in zip(names, case_seeds):
        image, label, affine, meta = _make_case(shape, spacing, case_seed, name in situs, **case_kwargs)
        labelled = name not in splits["test"]
        _save_nifti(np.rint(image), affine, out / ("imagesTr" if labelled else "imagesTs") / f"{name}.nii.gz", np.int16)
        if labelled:
            _save_nifti(label, affine, out / "labelsTr" / f"{name}.nii.gz", np.uint8)
        per_case[name] = {"seed": case_seed, **meta}

    def item(name: str) -> dict[str, str]:
        return {"image": f"imagesTr/{name}.nii.gz", "label": f"labelsTr/{name}.nii.gz"}

    datalist = {
        "name": "monai_fine_phantom",
        "description": "Synthetic contrast-enhanced abdominal CT phantom, BTCV labels (monai_fine.data.phantom)",
        "reference": "monai_fine",
        "licence": "Apache-2.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in BTCV_LABELS.items()},
        "numTraining": len(splits["training"]),
        "numValidation": len(splits["validation"]),
        "numTest": len(splits["test"]),
        "training": [item(n) for n in splits["training"]],
        "validation": [item(n) for n in splits["validation"]],
        "test": [{"image": f"imagesTs/{n}.nii.gz"} for n in splits["test"]],
        "situs_inversus": sorted(situs),
        "phantom": {
            "seed": seed,
            "shape": [int(s) for s in shape],
            "spacing": [float(s) for s in spacing],
            "case_kwargs": case_kwargs,
            "cases": per_case,
        },
    }
    path = out / "dataset_0.json"
    text = json.dumps(datalist, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    path.write_text(text + "\n")
    return path


def phantom(
    out: str,
    num_cases: int = 12,
    seed: int = 0,
    num_test: int = 2,
    shape: Sequence[int] = PHANTOM.shape,
    spacing: Sequence[float] = PHANTOM.spacing,
    val_fraction: float = 0.2,
    situs_inversus_fraction: float = 0.0,
) -> str:
    """Write a synthetic abdominal CT data set (NIfTI + ``dataset_0.json``) in BTCV layout.

    .. code-block:: bash

        python -m monai_fine phantom --out data/phantom --num-cases 12 --seed 0

    Args:
        out: output folder.
        num_cases: number of labelled cases (training + validation).
        seed: data set seed.
        num_test: number of additional unlabelled test cases in ``imagesTs``.
        shape: volume size in voxels, e.g. ``--shape '[96,96,64]'``.
        spacing: voxel size in mm.
        val_fraction: fraction of the labelled cases used for validation.
        situs_inversus_fraction: fraction of the cases drawn with a mirrored organ arrangement.

    Returns:
        Path of the written ``dataset_0.json``.
    """
    path = make_phantom_dataset(
        out,
        num_cases=num_cases,
        seed=seed,
        shape=tuple(int(s) for s in shape),
        spacing=tuple(float(s) for s in spacing),
        num_test=num_test,
        val_fraction=val_fraction,
        situs_inversus_fraction=situs_inversus_fraction,
    )
    return str(path)
