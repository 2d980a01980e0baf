"""A test scene read window by window: image bands, validity and the road truth, made as the
tile stage makes training masks (road vectors buffered by their width and burned, or a label
raster with road = 1 and its own nodata excluded).

Evaluate and the per-pixel baseline score whole scenes through this, so neither holds a scene
in memory and both see the same truth.
"""

from __future__ import annotations

import contextlib
from types import TracebackType

import numpy as np
from affine import Affine

from pipeline import raster
from pipeline.config import DataParams, SceneSource


class TruthError(ValueError):
    """A test scene's truth cannot be made; the message names the file."""


class SceneWindows:
    """Open readers for one scene; ``read`` returns (image, valid, truth) of a window inside it.

    ``valid`` excludes the image's nodata (value, per-dataset mask or alpha) and, with a label
    raster, the labels' nodata.
    """

    def __init__(self, scene: SceneSource, data: DataParams) -> None:
        self.scene = scene
        self.info = raster.raster_info(scene.image)
        self.plan = raster.band_plan(scene.image, list(data.bands), scene.bands)
        self.roads = None
        if scene.roads is not None:
            from pipeline import vectors

            self.roads = vectors.load_scene_roads(scene, data, self.info)
        elif scene.labels is None:
            raise TruthError(
                f"{scene.image}: scene {scene.name} has neither roads nor labels to score against"
            )
        else:
            labels = raster.raster_info(scene.labels)
            if (labels.height, labels.width) != (self.info.height, self.info.width):
                raise TruthError(
                    f"{scene.labels}: label raster is {labels.width}x{labels.height}, its image "
                    f"{scene.image} is {self.info.width}x{self.info.height}; resample it onto the image grid"
                )
        self._stack = contextlib.ExitStack()
        self._image: raster.WindowReader | None = None
        self._labels: raster.WindowReader | None = None

    def road_classes(self, attribute: str) -> dict[str, object]:
        """The scene's road polygons grouped by the values of ``attribute`` (as text; missing
        values are "unknown"); empty for a scene scored against a label raster. Raises
        TruthError naming the file when the vectors have no such attribute."""
        if self.roads is None or len(self.roads) == 0:
            return {}
        if attribute not in self.roads.columns:
            columns = ", ".join(c for c in self.roads.columns if c != self.roads.geometry.name)
            raise TruthError(
                f"{self.scene.roads}: no attribute {attribute!r} to report recall by road class "
                f"(it has: {columns or 'none'}); set evaluate.class_attribute to one of them, or null"
            )
        values = (
            self.roads[attribute]
            .astype(object)
            .where(self.roads[attribute].notna(), "unknown")
            .astype(str)
        )
        return {
            value: self.roads[values == value].reset_index(drop=True)
            for value in sorted(values.unique())
        }

    def __enter__(self) -> SceneWindows:
        self._image = self._stack.enter_context(raster.open_reader(self.scene.image, self.plan))
        if self.roads is None:
            self._labels = self._stack.enter_context(raster.open_reader(self.scene.labels))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def read(
        self, col_off: int, row_off: int, width: int, height: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image[C,H,W] in the file's dtype, valid[H,W] bool, truth[H,W] bool) of a window."""
        if self._image is None:
            raise RuntimeError("SceneWindows.read outside its `with` block")
        image, valid = raster.read_window(self._image, col_off, row_off, width, height)
        if self.roads is not None:
            truth = self.burn(self.roads, col_off, row_off, width, height)
        else:
            label, label_valid = raster.read_window(self._labels, col_off, row_off, width, height)
            truth, valid = label[0] == 1, valid & label_valid
        return image, valid, truth

    def burn(
        self, polygons: object, col_off: int, row_off: int, width: int, height: int
    ) -> np.ndarray:
        """bool[H,W]: ``polygons`` (the scene's roads, or one class of them from
        ``road_classes``) burned on a window of the image grid, as the truth is."""
        from pipeline import vectors

        transform = self.info.transform @ Affine.translation(col_off, row_off)
        return vectors.burn_mask(polygons, transform, (height, width)) > 0
