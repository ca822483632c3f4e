"""A LaPa-11 face parser built from dlib's 68 landmarks, for machines without a neural face parser.

Parts with landmarks are polygons: nose (bridge to nostrils), upper lip, inner mouth and lower lip
(outer and inner lip outlines). A brow is the stroke that is not skin-coloured in a window around its 5
points and overlaps the band along them, or else is centred level with that band (a strand of hair
higher up is not a brow); an eye is its 6-point
outline, less the pixels in it that are clearly skin-coloured, plus the dark stroke around it (the
points fit lashes and lids loosely); where no stroke is found, the band or outline itself. Skin is the
jaw line closed over the forehead, up to an estimate of the top of the skull. Hair and background have
no landmarks; they are guessed from colour and position:

1. GrabCut (OpenCV) separates the person from the background, seeded with the face (sure person), a
   head-shaped region around it (probably person) and the crop's border (probably background).
2. A Gaussian colour model of the cheeks says which pixels look like skin.
3. A second colour model, fitted to the non-skin pixels of the scalp (inside the outline, well above
   the brows), adds the pixels of the hair's colour connected to them (long hair GrabCut left out).
   Above the brows, a pixel nearer in colour to the top of the head outline (hair on most heads) than
   to the cheeks is not skin: light hair, which the cheeks' colour model alone calls skin.
4. Person pixels that do not look like skin are hair; inside the face outline they are hair only well
   above the brows (a fringe), elsewhere everywhere (the hair around the head, long hair over the
   shoulders; clothes are misread as hair). Person pixels that look like skin outside the face are skin
   (neck, ears).

How good this is, measured against the synthetic generator's exact labels and against boxes drawn by
hand on a real photograph (``parser_accuracy``), is in ``benchmarks/RESULTS.md``: skin and background
are good, eyes and nose fair, lips and brows weaker, hair usable on most faces and poor on some; a
profile face still gets a frontal layout. FaRL's parser (``--parser farl``) is the reference.
"""
from __future__ import annotations

import numpy as np

from ..data.synthetic import (HAIR, INNER_MOUTH, LEFT_BROW, LEFT_EYE, LOWER_LIP, NOSE, RIGHT_BROW, RIGHT_EYE, SKIN,
                              UPPER_LIP)
from .faces import Box, implied_box
from .landmarks import landmarks68

NAME = "landmark68"

_JAW = list(range(0, 17))
_BROW_IMAGE_LEFT, _BROW_IMAGE_RIGHT = list(range(17, 22)), list(range(22, 27))
_EYE_IMAGE_LEFT, _EYE_IMAGE_RIGHT = list(range(36, 42)), list(range(42, 48))
_UPPER_LIP = [48, 49, 50, 51, 52, 53, 54, 64, 63, 62, 61, 60]
_LOWER_LIP = [54, 55, 56, 57, 58, 59, 48, 60, 67, 66, 65, 64]
_INNER_MOUTH = list(range(60, 68))
_SKULL = 0.62        # forehead height above the brows, as a fraction of the brow-to-chin distance
_BROW_THICKNESS = 0.12  # brow band, as a fraction of the distance between the eye centres
# a brow stroke off its band must be centred this near it (same unit); 0.25 already takes the strand of
# hair above the astronaut's left brow (parser_accuracy), 0.1 loses synthetic brows drawn off their points
_BROW_REACH = 0.2
_SKIN_SIGMA = 4.0    # Mahalanobis radius of "looks like skin"
_CROWN = 0.25        # above the brows by this fraction of brow-to-chin: hair on most heads, still inside a 1.3x crop
_CROWN_SKIN_SIGMA = 2.5  # a crown this close to the cheeks' colour (median) is skin: no hair model
_EYE_SKIN_SIGMA = 2.0  # inside the eye outline, only clearly skin-coloured pixels are left out (lids, corners)


def _cv2():
    import cv2
    return cv2


def _fill(mask: np.ndarray, points: np.ndarray, value: int = 1) -> None:
    _cv2().fillPoly(mask, [np.round(points * 4).astype(np.int32)], value, lineType=_cv2().LINE_8, shift=2)


def _brow_band(p: np.ndarray, idx: list[int], thickness: float, up: np.ndarray) -> np.ndarray:
    line = p[idx]
    # the 5 points run near the brow's upper edge (measured: this band scores best on synthetic faces)
    return np.concatenate([line + up * thickness * 0.2, (line - up * thickness * 0.8)[::-1]])


def _head_outline(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the face outline: jaw closed over the forehead, the up direction of the face)."""
    brow_mid = p[17:27].mean(0)
    chin = p[8]
    up = brow_mid - chin
    height = float(np.linalg.norm(up)) + 1e-6
    up = up / height
    jaw = p[_JAW]
    # forehead: an arc from the jaw's top ends up over the brows to the top of the skull
    left, right = jaw[0], jaw[-1]
    centre = (left + right) / 2
    half = (right - left) / 2
    top = brow_mid + up * _SKULL * height
    lift = top - centre
    angles = np.linspace(0.0, np.pi, 15)[1:-1]
    arc = centre + np.outer(np.cos(angles), half) + np.outer(np.sin(angles), lift)
    return np.concatenate([jaw, arc]), up


def _colour_distance(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Mahalanobis distance of every pixel to the colours of ``mask``'s pixels, or None if too few."""
    samples = image[mask].astype(np.float64)
    if len(samples) < 20:
        return None
    mean = samples.mean(0)
    cov = np.cov(samples.T) + np.eye(3) * 4.0
    diff = image.reshape(-1, 3).astype(np.float64) - mean
    d2 = np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff)
    return np.sqrt(d2).reshape(image.shape[:2])


def _hair_coloured(image: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Pixels of the hair's colour (modelled on ``seed``, the non-skin pixels of the scalp) that are
    connected to the seed: long hair falling past the shoulders, which GrabCut may leave out."""
    distance = _colour_distance(image, seed)  # the same Gaussian colour model, fitted to hair
    if distance is None or seed.sum() < 50:
        return np.zeros(seed.shape, bool)
    return _touching(distance < _SKIN_SIGMA, seed)


def _touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The connected parts of ``mask`` that overlap ``seed``."""
    _, parts = _cv2().connectedComponents(mask.astype(np.uint8), connectivity=8)
    touching = np.unique(parts[seed & mask])
    return np.isin(parts, touching[touching > 0])


def _level_with(mask: np.ndarray, band: np.ndarray, up: np.ndarray, reach: float) -> np.ndarray:
    """The connected parts of ``mask`` whose centre lies within ``reach`` of ``band``'s centre along ``up``
    (a brow drawn a little off its landmarks, not a strand of hair above it)."""
    count, parts = _cv2().connectedComponents(mask.astype(np.uint8), connectivity=8)
    ys, xs = np.nonzero(band)
    if count < 2 or len(xs) == 0:
        return np.zeros(mask.shape, bool)
    level = float(np.mean(xs * up[0] + ys * up[1]))
    ys, xs = np.nonzero(parts)
    ids = parts[ys, xs]
    height = np.bincount(ids, xs * up[0] + ys * up[1], count) / np.maximum(np.bincount(ids, minlength=count), 1)
    keep = np.flatnonzero(np.abs(height - level) <= reach)
    return np.isin(parts, keep[keep > 0])


def _person(image: np.ndarray, face: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Person-vs-background mask by GrabCut, run at half resolution (4x faster, edges barely move)."""
    cv2 = _cv2()
    full = face.shape
    image, face, head = image[::2, ::2], face[::2, ::2], head[::2, ::2]
    h, w = face.shape
    mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    grown = cv2.dilate(head, np.ones((5, 5), np.uint8), iterations=max(1, h // 32))
    mask[grown > 0] = cv2.GC_PR_FGD
    mask[face > 0] = cv2.GC_FGD
    border = max(2, h // 48)
    frame = np.zeros((h, w), bool)
    frame[:border], frame[-border:], frame[:, :border], frame[:, -border:] = True, True, True, True
    mask[frame & (mask == cv2.GC_PR_BGD)] = cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(np.ascontiguousarray(image[..., ::-1]), mask, None, bgd, fgd, 3, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a degenerate seed (all one class): keep the seed itself
        pass
    person = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    return cv2.resize(person, (full[1], full[0]), interpolation=cv2.INTER_NEAREST) > 0


def parse_from_landmarks(image: np.ndarray, points68: np.ndarray) -> np.ndarray:
    """LaPa-11 labels ``[H, W]`` uint8 for an RGB uint8 image and its 68 landmarks."""
    p = np.asarray(points68, np.float32)
    eye_dist = float(np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0))) + 1e-6
    labels, skin_like, skin_distance = _skin_hair_background(image, p, eye_dist)
    parts = np.zeros_like(labels)
    up = _head_outline(p)[1]
    for label, idx in ((RIGHT_BROW, _BROW_IMAGE_LEFT), (LEFT_BROW, _BROW_IMAGE_RIGHT)):
        _fill(parts, _brow_band(p, idx, _BROW_THICKNESS * eye_dist, up), label)
        # the 5 points sit on a brow only roughly: where the window around them holds a stroke that is
        # not skin-coloured, that stroke is the brow
        window = np.zeros_like(labels)
        _fill(window, np.concatenate([p[idx] + up * 0.3 * eye_dist, (p[idx] - up * 0.12 * eye_dist)[::-1]]))
        band = parts == label
        candidates = (window > 0) & ~skin_like & (labels != HAIR)
        stroke = _touching(candidates, band)
        if stroke.sum() <= 0.3 * band.sum():  # none on the band: one a little off it, centred near it
            stroke = _level_with(candidates, band, up, _BROW_REACH * eye_dist)
        if stroke.sum() > 0.3 * band.sum():
            parts[band] = 0
            parts[stroke] = label
    _fill(parts, _nose_outline(p, eye_dist), NOSE)
    for label, idx in ((UPPER_LIP, _UPPER_LIP), (LOWER_LIP, _LOWER_LIP), (INNER_MOUTH, _INNER_MOUTH)):
        _fill(parts, p[idx], label)
    for label, idx in ((RIGHT_EYE, _EYE_IMAGE_LEFT), (LEFT_EYE, _EYE_IMAGE_RIGHT)):
        outline = np.zeros_like(labels)
        _fill(outline, p[idx])
        # the eye is the non-skin part of its outline grown a little (the 6 points fit loosely)
        grown = _cv2().dilate(outline, np.ones((3, 3), np.uint8), iterations=max(1, int(0.05 * eye_dist)))
        eye = (grown > 0) & ~skin_like & (parts == 0)
        if eye.sum() > 0.3 * outline.sum():
            eye |= (outline > 0) & ~(skin_distance < _EYE_SKIN_SIGMA)
        else:
            eye = outline > 0
        parts[eye] = label
    labels[parts > 0] = parts[parts > 0]
    return labels


def _skin_hair_background(image: np.ndarray, p: np.ndarray,
                          eye_dist: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skin (1), hair (10) and background (0) before the parts are drawn over them, the mask of the
    pixels that look like skin, and every pixel's colour distance to the cheeks."""
    h, w = image.shape[:2]
    outline, up = _head_outline(p)
    head = np.zeros((h, w), np.uint8)
    _fill(head, outline)
    core = np.zeros((h, w), np.uint8)  # surely face: the jaw-and-brows hull, shrunk a little
    _fill(core, np.concatenate([p[1:16], p[26:16:-1]]))
    core = _cv2().erode(core, np.ones((5, 5), np.uint8))
    neck = np.zeros((h, w), np.uint8)  # below the jaw: probably person (neck, long hair, shoulders)
    _fill(neck, np.concatenate([p[4:13], p[12:3:-1] - up * eye_dist * 1.2]))
    person = _person(image, core, head | neck)

    cheeks = np.zeros((h, w), np.uint8)  # between jaw, mouth corner, nostril and the eye's outer corner
    for jaw_top, jaw_low, mouth, nostril, eye in ((1, 4, 48, 31, 36), (15, 12, 54, 35, 45)):
        corner = (p[jaw_top] + p[nostril]) / 2 + (p[eye] - p[jaw_top]) * 0.5
        _fill(cheeks, np.stack([p[jaw_top], p[jaw_low], p[mouth], p[nostril], corner]))
    distance = _colour_distance(image, cheeks > 0)
    in_head = head > 0
    skin_like = distance < _SKIN_SIGMA if distance is not None else in_head
    if distance is None:
        distance = np.where(in_head, 0.0, np.inf)

    # well above the brows, a non-skin colour inside the outline is hair (the hairline or a fringe)
    scalp = _above_line(h, w, p[17:27].mean(0) + up * 0.3 * eye_dist, up)
    skin_like = skin_like & ~(scalp & _hair_not_skin(image, p, up, in_head & person, distance))
    hair = (person | _hair_coloured(image, in_head & scalp & ~skin_like)) & ~skin_like
    hair = _cv2().morphologyEx(hair.astype(np.uint8), _cv2().MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    labels = np.zeros((h, w), np.uint8)
    labels[hair] = HAIR
    labels[in_head & (skin_like | ~scalp)] = SKIN
    labels[person & skin_like & ~in_head] = SKIN  # neck, ears
    return labels, skin_like, distance


def _hair_not_skin(image: np.ndarray, p: np.ndarray, up: np.ndarray, head: np.ndarray,
                   skin_distance: np.ndarray) -> np.ndarray:
    """Pixels nearer in colour to the top of the head outline (``_CROWN`` above the brows and higher) than
    to the cheeks: light hair that the skin model alone takes for skin. That top is hair on most faces;
    where its colour is the skin's (a bald head, a high forehead) nothing is returned."""
    brow_mid = p[17:27].mean(0)
    height = float(np.linalg.norm(brow_mid - p[8]))
    crown = head & _above_line(*head.shape, brow_mid + up * _CROWN * height, up)
    hair_distance = _colour_distance(image, crown)
    if hair_distance is None or crown.sum() < 50 or np.median(skin_distance[crown]) < _CROWN_SKIN_SIGMA:
        return np.zeros(head.shape, bool)
    return hair_distance < skin_distance


def _above_line(h: int, w: int, point: np.ndarray, up: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    return (xs - point[0]) * up[0] + (ys - point[1]) * up[1] > 0


def _nose_outline(p: np.ndarray, eye_dist: float) -> np.ndarray:
    """Bridge (27) down to the nostrils (31-35), a little wider than the points at the wings."""
    axis = p[33] - p[27]
    across = np.array([axis[1], -axis[0]]) / (np.linalg.norm(axis) + 1e-6)
    top_half = 0.04 * eye_dist
    wing = 0.03 * eye_dist
    left_wing, right_wing = p[31] - across * wing, p[35] + across * wing
    if np.dot(p[35] - p[31], across) < 0:  # ``across`` points to the image's left
        left_wing, right_wing = p[31] + across * wing, p[35] - across * wing
    return np.stack([p[27] - across * top_half, p[27] + across * top_half, right_wing,
                     p[34], p[33], p[32], left_wing])


class LandmarkParser:
    """LaPa-11 parsing of a face crop from dlib's 68 landmarks; see the module notes for its limits."""

    name = NAME

    def __init__(self, crop_scale: float = 1.3):
        self.crop_scale = crop_scale

    def landmarks(self, crop: np.ndarray, box: Box | None = None) -> np.ndarray:
        return landmarks68(crop, box if box is not None else implied_box(crop.shape[0], self.crop_scale))

    def parse(self, crop: np.ndarray, box: Box | None = None) -> np.ndarray:
        """Labels for one crop; ``box``: the face box in crop coordinates (default: the central
        1/crop_scale of the crop, where ``crop_face`` puts an unclipped face)."""
        return parse_from_landmarks(crop, self.landmarks(crop, box))
