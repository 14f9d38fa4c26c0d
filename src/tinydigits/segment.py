"""Finding the separate digits in a picture's ink: steps 1 and 2 of :mod:`tinydigits.read`
(connected components, specks dropped, the fragments of one digit merged). No model is
needed, so ``predict`` uses it too, to warn when a picture holds several digits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .preprocess import PreprocessError

__all__ = ["MAX_DIGITS", "Piece", "digit_groups"]

MAX_DIGITS = 32  # more is not a number to read but a page of text: refused before any classifying
INK = 0.35  # ink strength that counts as a stroke when grouping pixels
SPECK = 0.02  # components with less ink than this share of the heaviest one are noise
OVERLAP = 0.5  # components sharing this share of the narrower one's columns are one digit
FRAGMENT = 0.6  # components shorter than this share of the digits' height are fragments of one
STROKE = 0.35  # fragments thinner than this share of it join a digit this close, in heights
LIGHT = 0.15  # as do marks with less ink than this share of a typical component (a stray line)


@dataclass(frozen=True)
class Piece:
    """A candidate digit: its ink alone, cropped, and where the crop sits in the ink map."""

    ink: np.ndarray
    top: int
    left: int

    @property
    def height(self) -> int:
        return self.ink.shape[0]

    @property
    def width(self) -> int:
        return self.ink.shape[1]

    def crop(self) -> Piece:
        """The same piece, cropped to its ink."""
        rows, cols = np.flatnonzero(self.ink.any(axis=1)), np.flatnonzero(self.ink.any(axis=0))
        if rows.size == 0:
            return self
        return Piece(self.ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], self.top + int(rows[0]),
                      self.left + int(cols[0]))


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _size(box: tuple[slice, slice]) -> tuple[int, int]:
    return box[0].stop - box[0].start, box[1].stop - box[1].start


def _without_lines_and_frames(kept: list[int], boxes: list[tuple[slice, slice]]) -> list[int]:
    """Drop a ruled line under or over the number (thin, and longer than a digit is wide)
    and a frame drawn around it (a mark whose box holds two or more other marks): left in,
    either shares columns with every digit and would merge them all into one."""
    height = float(np.median([_size(boxes[i])[0] for i in kept]))

    def inside(inner: tuple[slice, slice], outer: tuple[slice, slice]) -> bool:
        return all(o.start <= i.start and i.stop <= o.stop for i, o in zip(inner, outer, strict=True))

    def line(i: int) -> bool:
        tall, wide = _size(boxes[i])
        return tall < STROKE * height and wide > 1.5 * height

    def frame(i: int) -> bool:
        return sum(inside(boxes[j], boxes[i]) for j in kept if j != i) >= 2

    return [i for i in kept if not line(i) and not frame(i)]


def digit_groups(ink: np.ndarray) -> list[Piece]:
    """The separate digits of an ink map (steps 1 and 2 above), left to right; touching digits
    are still one group. Raises :class:`PreprocessError` on a blank picture and when there are
    more than :data:`MAX_DIGITS`."""
    labels, count = ndimage.label(ink > INK, structure=np.ones((3, 3)))
    if count == 0:
        raise PreprocessError("no ink found: the image looks blank")
    mass = ndimage.sum_labels(ink, labels, index=np.arange(1, count + 1))
    boxes = ndimage.find_objects(labels)
    kept = [i for i in range(count) if mass[i] >= SPECK * mass.max()]
    if len(kept) > 4 * MAX_DIGITS:  # far more marks than any number has: not worth grouping
        raise PreprocessError(f"found {len(kept)} separate marks; a number has at most {MAX_DIGITS} digits")
    kept = _without_lines_and_frames(kept, boxes)
    if not kept:
        raise PreprocessError("no digits found: only lines or a frame")
    parent = list(range(count))
    for a_index, a in enumerate(kept):
        for b in kept[a_index + 1 :]:
            (_, a_cols), (_, b_cols) = boxes[a], boxes[b]
            shared = min(a_cols.stop, b_cols.stop) - max(a_cols.start, b_cols.start)
            narrower = min(a_cols.stop - a_cols.start, b_cols.stop - b_cols.start)
            if shared >= OVERLAP * narrower:
                parent[_find(parent, a)] = _find(parent, b)
    # A fragment much shorter than the digits (a 5's flag, a 7's bar) that still shares columns
    # with a taller mark belongs to the one it shares most with, even if it sticks out beyond
    # it; a light stray mark, to the heavier one it is nearest.
    height = float(np.median([boxes[i][0].stop - boxes[i][0].start for i in kept]))
    typical = float(np.median(mass[kept]))
    for a in kept:
        rows, cols = boxes[a]
        light = mass[a] < LIGHT * typical
        if rows.stop - rows.start >= FRAGMENT * height and not light:
            continue
        shared = {b: min(cols.stop, boxes[b][1].stop) - max(cols.start, boxes[b][1].start)
                  for b in kept if b != a and (mass[b] > mass[a] if light else
                                               boxes[b][0].stop - boxes[b][0].start > rows.stop - rows.start)}
        best = max(shared, key=shared.__getitem__, default=None)
        if best is None:
            continue
        # A thin stroke (a 5's flag written apart) may not reach its digit's columns at all:
        # it joins the nearest one when that is close; a short digit (a flat 2) is never this thin.
        thin = rows.stop - rows.start < STROKE * height or light
        if shared[best] >= 0.25 * (cols.stop - cols.start) or (thin and -shared[best] <= STROKE * height):
            parent[_find(parent, a)] = _find(parent, best)
    groups: dict[int, list[int]] = {}
    for i in kept:
        groups.setdefault(_find(parent, i), []).append(i)
    if len(groups) > MAX_DIGITS:
        raise PreprocessError(f"found {len(groups)} separate digits; `read` reads numbers of up to "
                              f"{MAX_DIGITS}")
    pieces = []
    for members in groups.values():
        rows = slice(min(boxes[i][0].start for i in members), max(boxes[i][0].stop for i in members))
        cols = slice(min(boxes[i][1].start for i in members), max(boxes[i][1].stop for i in members))
        mask = np.isin(labels[rows, cols], [i + 1 for i in members])
        # With a one-pixel halo: the faint antialiased edge of each stroke belongs to it.
        mask = ndimage.binary_dilation(mask, np.ones((3, 3)))
        pieces.append(Piece(np.where(mask, ink[rows, cols], np.float32(0)), rows.start, cols.start).crop())
    return sorted(pieces, key=lambda piece: piece.left + piece.width / 2)
