"""Typed, validated configuration: ``params.yaml`` -> :class:`Params`.

One pydantic model per stage, ``extra="forbid"`` everywhere so a typo in params.yaml is an
error naming the key, and every field carries a description. Stage functions receive these
objects; nothing else in the project reads YAML. Derived output paths live here, in one place.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.chip_format import INDEX_FILE, STATS_FILE
from pipeline.model_config import DECODER_CHANNELS
from pipeline.registry import DEFAULT_TRACKING_URI

# Autocast precision of training and inference (pipeline.model.autocast_dtype says what auto picks)
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
Device = Literal["auto", "cpu", "cuda"]
# predict's output sample type: uint8 (p = value / 254, 255 = nodata) or float32 (NaN = nodata)
OutputDtype = Literal["uint8", "float32"]

BAND_NAMES_RGBN = ["red", "green", "blue", "nir"]


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


# --------------------------------------------------------------------------------------- synth
class SynthSceneSpec(_Section):
    name: str = Field(description="Scene id; files are <out_dir>/<name>.tif and <name>.roads.gpkg")
    seed: int = Field(description="Random seed: the same seed gives the same scene, bit for bit")
    split: Literal["auto", "train", "val", "test", "none"] = Field(
        "auto",
        description="The scene's split where data.scenes takes the synthetic scenes ({synth: "
        "all}): as a data scene's split; 'none': generated but seen by no stage (a region to "
        "predict)",
    )


class SynthParams(_Section):
    out_dir: Path = Field(Path("data/scenes"), description="Where synthetic scenes are written")
    scenes: list[SynthSceneSpec] = Field(description="Scenes to generate ([] on your own rasters)")
    size: int = Field(1024, ge=64, description="Scene width and height in pixels")
    gsd: float = Field(
        1.0, ge=0.1, le=10.0, description="Ground sampling distance, metres per pixel"
    )
    crs: str = Field("EPSG:32632", description="Projected CRS of the scenes (a UTM zone)")
    origin: tuple[float, float] = Field(
        (500000.0, 5400000.0), description="Upper-left corner (x, y) of the first scene in the CRS"
    )
    dtype: Literal["uint8", "uint16"] = Field("uint8", description="Sample type of the image bands")
    nodata_border: bool = Field(
        True, description="Mask a rotated acquisition footprint with nodata, like a real image"
    )

    @field_validator("scenes")
    @classmethod
    def _unique_names(cls, v: list[SynthSceneSpec]) -> list[SynthSceneSpec]:
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate scene names: {dup} (each writes <out_dir>/<name>.tif)")
        return v

    def scene_files(self, name: str) -> tuple[Path, Path, Path, Path]:
        """The image, road vectors, land cover and hard negatives (the railway) synth writes
        for scene ``name``."""
        out = Path(self.out_dir)
        return (
            out / f"{name}.tif",
            out / f"{name}.roads.gpkg",
            out / f"{name}.landcover.tif",
            out / f"{name}.negatives.gpkg",
        )


# ---------------------------------------------------------------------------------------- data
class SceneSource(_Section):
    """One input scene: an image plus road vectors or a label raster."""

    name: str = Field(description="Scene id, unique")
    image: Path = Field(description="Any GDAL raster (GeoTIFF, COG, VRT) with a CRS")
    roads: Path | None = Field(
        None, description="Road vectors, any OGR format (GeoPackage, GeoJSON, Shapefile)"
    )
    labels: Path | None = Field(None, description="Label raster on the image grid (road = 1)")
    centrelines: Path | None = Field(
        None,
        description="With labels: a raster of the road centrelines on the image grid (road = 1), "
        "the truth network evaluate scores APLS and TOPO against instead of one traced from "
        "the labels (RoadNet ships them)",
    )
    landcover: Path | None = Field(
        None, description="Optional land-cover class raster (for pretraining)"
    )
    negatives: Path | None = Field(
        None,
        description="Optional vectors of what looks like road and is not (railways, river banks, "
        "field margins; e.g. OSM railway lines): lines buffered by their width attribute or "
        "data.negative_half_width_m, marked in the chips as hard negatives that train weighs "
        "by train.negative_weight; a file without features marks nothing",
    )
    split: Literal["auto", "train", "val", "test"] = Field(
        "auto", description="'test' holds the whole scene out; 'auto' assigns area blocks"
    )
    bands: list[int] | dict[str, int] | None = Field(
        None,
        description="The image's bands for data.bands: 1-based indexes in data.bands order, or "
        "name -> index; None: by band name (descriptions, colour interpretation), else file order",
    )
    label_offset_m: tuple[float, float] | None = Field(
        None,
        description="Shift the road vectors by (east, north) metres before they are burned: "
        "labels drawn over other imagery (OpenStreetMap) are often a few metres off; "
        "`pipeline label-check` measures the shift",
    )
    transfer: bool = Field(
        False,
        description="Another source (place, sensor, pixel size) held out whole to measure how the "
        "model travels: never trained or validated on, scored apart from the test scenes "
        "(evaluate's `transfer` metrics, the model card)",
    )

    @model_validator(mode="before")
    @classmethod
    def _transfer_is_held_out(cls, data: Any) -> Any:
        if not (isinstance(data, dict) and data.get("transfer")):
            return data
        split = data.get("split", "auto")
        if split not in ("auto", "test"):
            raise ValueError(
                f"scene {data.get('name')!r}: transfer: true holds the whole scene out, so its "
                f"split cannot be {split!r}"
            )
        return {**data, "split": "test"}

    @model_validator(mode="after")
    def _one_label_source(self) -> SceneSource:
        if (self.roads is None) == (self.labels is None):
            raise ValueError(f"scene {self.name!r}: give exactly one of 'roads' or 'labels'")
        if self.label_offset_m is not None and self.roads is None:
            raise ValueError(
                f"scene {self.name!r}: label_offset_m shifts road vectors; a label raster "
                "must be resampled onto the image grid instead"
            )
        if self.centrelines is not None and self.labels is None:
            raise ValueError(
                f"scene {self.name!r}: centrelines go with labels; road vectors are their own "
                "centrelines"
            )
        return self


# Full carriageway widths in metres by OSM highway class (typical European/North American
# widths: lanes of ~3.5 m, a motorway's two carriageways with shoulders, a one-lane track).
OSM_CLASS_WIDTHS_M: dict[str, float] = {
    "motorway": 18.0,
    "trunk": 14.0,
    "primary": 10.0,
    "secondary": 8.0,
    "tertiary": 7.0,
    "unclassified": 6.0,
    "residential": 6.0,
    "living_street": 5.0,
    "road": 6.0,
    "service": 4.0,
    "track": 3.0,
    "motorway_link": 7.0,
    "trunk_link": 7.0,
    "primary_link": 6.0,
    "secondary_link": 6.0,
    "tertiary_link": 6.0,
}


class OsmParams(_Section):
    """How road vectors with OpenStreetMap tags (a ``highway`` attribute) become labels."""

    apply: bool = Field(
        True,
        description="Apply these rules to road vectors that have a 'highway' attribute (OSM "
        "extracts, Overpass exports); false: treat them like any other vectors",
    )
    road_classes: list[str] = Field(
        default_factory=lambda: list(OSM_CLASS_WIDTHS_M),
        description="highway values that count as road; others (footway, path, cycleway, steps, "
        "construction, proposed, ...) and railways are left out of the labels",
    )
    class_widths_m: dict[str, float] = Field(
        default_factory=lambda: dict(OSM_CLASS_WIDTHS_M),
        description="Full width in metres per highway class, used when a way has no width or "
        "lanes tag",
    )
    lane_width_m: float = Field(3.5, gt=0, description="Width of one lane (lanes tag x this)")
    default_width_m: float = Field(
        5.0, gt=0, description="Width of a road class missing from class_widths_m"
    )

    @field_validator("class_widths_m")
    @classmethod
    def _positive_widths(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if not w > 0}
        if bad:
            raise ValueError(f"widths must be positive metres, got {bad}")
        return v


class LabelConvention(_Section):
    """How a tile set's label images mark road: a value (grey) or colour (RGB) for road, one
    for background, and optionally a threshold for anti-aliased edges between the two."""

    road: list[int] = Field(
        [255], min_length=1, description="Road value [v] or colour [r, g, b] in the label images"
    )
    background: list[int] = Field(
        [0], min_length=1, description="Background value [v] or colour [r, g, b]"
    )
    edge_threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Accept colours between background and road (anti-aliased edges) and call "
        "road those at least this far from background to road (0.5: the nearer one); null: "
        "any colour other than road and background is an error",
    )

    @model_validator(mode="after")
    def _same_length(self) -> LabelConvention:
        if len(self.road) != len(self.background):
            raise ValueError(
                f"label road {self.road} and background {self.background} need as many values"
            )
        if self.road == self.background:
            raise ValueError(f"label road and background are both {self.road}")
        return self


class TileSetSplit(_Section):
    """Whole tiles to train/val/test: named tiles first, then fractions of the rest drawn by a
    seeded hash of the tile name (the same files and seed always give the same split)."""

    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of the tiles held out for val")
    test_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of the tiles held out for test"
    )
    seed: int = Field(0, description="Seed of the tile hash that orders the draw")
    val: list[str] = Field(
        default_factory=list, description="Tiles (names as in {stem}) always in val"
    )
    test: list[str] = Field(
        default_factory=list, description="Tiles (names as in {stem}) always in test"
    )

    @model_validator(mode="after")
    def _fractions(self) -> TileSetSplit:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1 (train needs tiles)")
        both = set(self.val) & set(self.test)
        if both:
            raise ValueError(f"tiles listed in both val and test: {sorted(both)}")
        return self


def stem_pattern(v: str, field: str, example: str) -> str:
    """``v`` if it is a path pattern whose placeholders are ``{stem}`` (a tile's name) and/or
    ``{dir}`` (the folder of the tile's image below root: RoadNet keeps each scene's labels,
    under fixed names, beside its image: '{dir}/segmentation.png'), at least one of them."""
    import string

    try:
        names = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
    except ValueError as e:
        raise ValueError(f"{field} {v!r}: {e}") from None
    if not names or not names <= {"stem", "dir"}:
        raise ValueError(
            f"{field} {v!r}: needs {{stem}} (or {{dir}}, the image's folder below root) and no "
            f"other placeholder, e.g. {example!r}"
        )
    return v


class PansharpenSpec(_Section):
    """Tiles that ship as a panchromatic image and multispectral bands (SpaceNet's PAN/ and
    MUL/ folders): each tile is fused while it is prepared, as ``pipeline pansharpen`` fuses
    (a VRT: GDAL's weighted Brovey, computed as it is read)."""

    mul: str = Field(
        description="Multispectral image of a tile below root, with {stem} (e.g. "
        "'MUL/MUL_{stem}.tif'); the tile set's images are then its panchromatic images"
    )
    bands: dict[str, PositiveInt] = Field(
        description="MUL bands to keep, by name (WorldView-3: {red: 5, green: 3, blue: 2}); "
        "the names data.bands asks for",
        min_length=1,
    )

    @field_validator("mul")
    @classmethod
    def _has_stem(cls, v: str) -> str:
        return stem_pattern(v, "mul", "MUL/MUL_{stem}.tif")

    @field_validator("bands")
    @classmethod
    def _lower_case(cls, v: dict[str, int]) -> dict[str, int]:
        return {name.strip().lower(): band for name, band in v.items()}


class TileSetSource(_Section):
    """Many image/label tiles as one entry (a public tile set such as Massachusetts Roads or
    DeepGlobe): each tile becomes a scene ``<name>_<stem>``, split whole (pipeline/tilesets.py)."""

    name: str = Field(description="Tile set id, unique; its tiles are scenes <name>_<stem>")
    root: Path = Field(description="Folder of the tile set (paths below are relative to it)")
    images: str = Field(
        description="Glob of the images below root, one '*' in the file name: the tile's "
        "{stem} (e.g. 'images/*.png', 'sat/*.tiff', 'train/*_sat.jpg')"
    )
    labels: str | None = Field(
        None,
        description="Label image of a tile below root, with {stem} (e.g. 'masks/{stem}.png', "
        "'map/{stem}.tif', 'train/{stem}_mask.png') and/or {dir}, the folder of the tile's "
        "image below root (RoadNet: images '*/Ottawa-*.tif', labels '{dir}/segmentation.png')",
    )
    roads: str | None = Field(
        None,
        description="Instead of labels: road vectors of a tile below root (any OGR format), with "
        "{stem}, for georeferenced tiles that ship with centrelines (SpaceNet: "
        "'geojson_roads/SN3_roads_train_AOI_4_Shanghai_geojson_roads_{stem}.geojson'); burned "
        "as a scene's roads are (data.default_half_width_m, width_attribute), scored as "
        "networks against the centrelines; an empty file is a tile without roads",
    )
    centrelines: str | None = Field(
        None,
        description="With labels: a tile's road centreline image below root, with {stem} and/or "
        "{dir}, in the label convention (RoadNet: '{dir}/centerline.png'): the truth network "
        "evaluate scores APLS and TOPO against, instead of one traced from the labels",
    )
    pixel_size_m: float | None = Field(
        None,
        gt=0,
        description="Pixel size in metres of images without georeferencing (they get a local "
        "grid: docs/formats.md); images with a CRS keep their own grid",
    )
    label: LabelConvention = Field(
        default_factory=LabelConvention, description="Which label value or colour is road"
    )
    fill: list[int] | None = Field(
        None,
        description="Image colour outside the imagery footprint (e.g. [255, 255, 255]): pixels "
        "with exactly this value in every band are nodata in image and labels",
    )
    split: TileSetSplit = Field(default_factory=TileSetSplit, description="Whole-tile split")
    label_offset_m: tuple[float, float] | None = Field(
        None,
        description="With roads: shift every tile's road vectors by (east, north) metres "
        "(`pipeline label-check` measures it per tile)",
    )
    pansharpen: PansharpenSpec | None = Field(
        None,
        description="The images are panchromatic: fuse each with its multispectral image "
        "(georeferenced tiles; fill, one value, marks the panchromatic image's pixels outside "
        "the imagery, nodata in the fused image)",
    )
    transfer: bool = Field(
        False,
        description="Every tile held out: another source (place, sensor, pixel size) scored "
        "apart from the test scenes to measure how the model travels (evaluate's `transfer` "
        "metrics, the model card); `split` is then not used",
    )

    @field_validator("images")
    @classmethod
    def _one_star(cls, v: str) -> str:
        if Path(v).name.count("*") != 1 or any(c in Path(v).name for c in "?["):
            raise ValueError(
                f"images {v!r}: the file name part needs exactly one '*' (the tile's stem) "
                "and no other wildcard"
            )
        return v

    @field_validator("labels", "roads", "centrelines")
    @classmethod
    def _has_stem(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        example = {
            "labels": "masks/{stem}.png",
            "roads": "roads/{stem}.geojson",
            "centrelines": "centrelines/{stem}.png",
        }[str(info.field_name)]
        return stem_pattern(v, str(info.field_name), example)

    @model_validator(mode="after")
    def _one_truth(self) -> TileSetSource:
        if (self.labels is None) == (self.roads is None):
            raise ValueError(
                f"tile set {self.name!r}: give exactly one of 'labels' (label images) or "
                "'roads' (road vectors)"
            )
        # settings of the other kind of truth would be silently ignored: say so instead
        unused = (
            {"label_offset_m"}
            if self.labels is not None
            else {"label", "pixel_size_m", "centrelines"}
        ) & self.model_fields_set
        if unused:
            kind = "label images" if self.labels is not None else "road vectors"
            raise ValueError(
                f"tile set {self.name!r}: {sorted(unused)} do not apply to a tile set with "
                f"{kind} (label, pixel_size_m and centrelines go with labels, label_offset_m "
                "with roads)"
            )
        return self

    @model_validator(mode="after")
    def _pansharpened_fill(self) -> TileSetSource:
        if self.pansharpen is not None and self.fill is not None and len(self.fill) != 1:
            raise ValueError(
                f"tile set {self.name!r}: fill {self.fill} of a pansharpened set is one value, "
                "the panchromatic image's outside the imagery (e.g. [0])"
            )
        return self

    @property
    def truth(self) -> str:
        """The pattern of a tile's truth file: its label image or its road vectors."""
        return self.labels if self.labels is not None else str(self.roads)


class SynthScenesEntry(_Section):
    """``{synth: all}`` in data.scenes: every scene of synth.scenes, with its split, so the
    synthetic scenes are listed once. :func:`load_params` replaces it by their scene entries
    (:func:`expand_synth_scenes`): stages never see it."""

    synth: Literal["all"] = Field(
        description="'all': the scenes synth.scenes generates (those with split: none left out)"
    )


def _scene_kind(v: Any) -> str:
    if isinstance(v, dict):
        if "synth" in v:
            return "synth"
        return "tileset" if "images" in v else "scene"
    if isinstance(v, SynthScenesEntry):
        return "synth"
    return "tileset" if isinstance(v, TileSetSource) else "scene"


SceneEntry = Annotated[
    Annotated[SceneSource, Tag("scene")]
    | Annotated[TileSetSource, Tag("tileset")]
    | Annotated[SynthScenesEntry, Tag("synth")],
    Discriminator(_scene_kind),
]


class DataParams(_Section):
    scenes: list[SceneEntry] = Field(
        description="Input scenes, tile sets (entries with 'images') and {synth: all} (every "
        "scene synth.scenes generates, with its split)"
    )
    bands: list[str] = Field(
        default_factory=lambda: list(BAND_NAMES_RGBN), description="Band names, in file order"
    )
    width_attribute: str | None = Field(
        "width_m", description="Attribute giving a road's full width in metres; None to ignore"
    )
    default_half_width_m: float = Field(
        2.0, gt=0, description="Buffer each side of a centreline without width (SpaceNet: 2 m)"
    )
    negative_half_width_m: float = Field(
        2.5,
        gt=0,
        description="Buffer each side of a hard-negative line (a scene's negatives) without width",
    )
    osm: OsmParams = Field(
        default_factory=OsmParams,
        description="Road classes and widths for OpenStreetMap roads (.osm/.osm.pbf extracts, "
        "Overpass GeoJSON)",
    )

    @field_validator("scenes")
    @classmethod
    def _unique_names(cls, v: list[SceneEntry]) -> list[SceneEntry]:
        if sum(isinstance(s, SynthScenesEntry) for s in v) > 1:
            raise ValueError("{synth: all} is listed more than once")
        names = [s.name for s in v if not isinstance(s, SynthScenesEntry)]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate scene names: {sorted(dup)}")
        if not v:
            raise ValueError("at least one scene is needed")
        return v

    @model_validator(mode="after")
    def _pansharpened_bands(self) -> DataParams:
        for entry in self.scenes:
            if isinstance(entry, TileSetSource) and entry.pansharpen is not None:
                missing = [b for b in self.bands if b.lower() not in entry.pansharpen.bands]
                if missing:
                    raise ValueError(
                        f"tile set {entry.name!r}: data.bands asks for {missing}, which "
                        f"pansharpen.bands does not name ({sorted(entry.pansharpen.bands)})"
                    )
        return self


class LabelCheckParams(_Section):
    """`pipeline label-check`: how well road labels sit on the imagery, before training."""

    max_shift_m: float = Field(12.0, gt=0, description="Largest label shift searched, metres")
    tolerance_m: float = Field(
        2.0, ge=0, description="A scene whose best shift is larger is named in the report"
    )
    window_px: int = Field(512, ge=64, description="Side of the windows read per scene")
    windows: int = Field(4, ge=1, description="Windows per scene (those with the most road)")
    min_clarity: float = Field(
        10.0,
        gt=0,
        description="A shift is reported as clear, and flagged, only when the correlation peak "
        "stands this many median deviations above the surface's median (hand-labelled SpaceNet "
        "chips gave 3-7 with image edges alone: an unclear answer)",
    )
    omission_distance_m: float = Field(
        10.0, gt=0, description="Predicted road farther than this from any label counts as missed"
    )
    threshold: float = Field(
        0.5, ge=0, le=1, description="Probability above which a pixel is predicted road"
    )
    report_path: Path = Field(
        Path("outputs/label_check.json"),
        description="The report (not in reports/: the evaluate stage's output, which DVC empties)",
    )


# ---------------------------------------------------------------------------------------- tile
class SplitParams(_Section):
    block_size_m: float = Field(
        512.0, gt=0, description="Side of the square area blocks split as a unit"
    )
    val_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of 'auto' blocks assigned to val"
    )
    test_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of 'auto' blocks assigned to test"
    )
    gap_m: float = Field(
        0.0, ge=0, description="Empty margin between chips of different splits, metres"
    )
    seed: int = Field(0, description="Seed of the block assignment")


class TileParams(_Section):
    out_dir: Path = Field(Path("data/chips"), description="Chip arrays, chip index and stats")
    chip_size: int = Field(256, ge=32, description="Chip side in pixels, a multiple of 32")
    stride: int = Field(256, ge=16, description="Step between chips in pixels")
    max_nodata_fraction: float = Field(
        0.5, ge=0, le=1, description="Skip chips with more nodata than this"
    )
    split: SplitParams = Field(default_factory=SplitParams, description="Spatial split")
    workers: int = Field(2, ge=1, description="Dask workers for tiling")
    pixel_size_m: float | None = Field(
        None,
        gt=0,
        description="The model's pixel size in metres: scenes whose pixels differ from it by "
        "more than 1.25x (or are that much taller than wide) are chipped resampled to square "
        "pixels of it (with resample); null: the median of the train and validation scenes' "
        "pixel sizes",
    )
    resample: bool = Field(
        True,
        description="Chip every scene at one pixel size (pixel_size_m), as predict reads rasters "
        "at the model's; false: each scene at its own, the model's pixel size their median",
    )

    @field_validator("chip_size")
    @classmethod
    def _div32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"chip_size must be a multiple of 32 (U-Net depth 5), got {v}")
        return v

    @model_validator(mode="after")
    def _size_needs_resampling(self) -> TileParams:
        if self.pixel_size_m is not None and not self.resample:
            raise ValueError(
                "pixel_size_m is the size scenes are resampled to: it needs resample: true "
                "(with resample: false the model's pixel size is the scenes' median)"
            )
        return self

    @property
    def index_path(self) -> Path:
        return self.out_dir / INDEX_FILE

    @property
    def stats_path(self) -> Path:
        return self.out_dir / STATS_FILE


# ------------------------------------------------------------------------------------ pretrain
class PretrainParams(_Section):
    archs: list[str] = Field(
        default_factory=lambda: ["resnet18"], description="Backbones to pretrain"
    )
    out_dir: Path = Field(Path("models/backbones"), description="<arch>.safetensors + <arch>.json")
    task: Literal["auto", "landcover", "roads", "rotation"] = Field(
        "auto",
        description="Patch classes: landcover (the scenes' land-cover rasters), roads (from the road "
        "masks: no road, direction in 4 bins, junction), rotation (self-supervised: 0/90/180/270 "
        "degree turns of the imagery); auto: landcover where the chips have it, else roads",
    )
    unlabelled: list[Path] = Field(
        default_factory=list,
        description="Extra rasters without labels (the chips' bands, in order) whose patches add "
        "to the train split of task rotation",
    )
    input_size: int = Field(
        64, ge=32, description="Chips are resized to this side for classification"
    )
    epochs: int = Field(3, ge=1, description="Training epochs")
    batch_size: int = Field(32, ge=1, description="Batch size")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    aux_weight: float = Field(0.3, ge=0, description="GoogLeNet auxiliary loss weight (paper: 0.3)")
    precision: Precision = Field(
        "auto",
        description="Autocast precision, as train.precision (auto: bf16 on CUDA and on CPUs with native bf16)",
    )
    max_batches_per_epoch: int | None = Field(
        None,
        ge=1,
        description="Cap batches per epoch for a quick run (an epoch is then a random sample "
        "of the chips); null: every chip once per epoch",
    )
    seed: int = Field(0, description="Seed")

    @model_validator(mode="after")
    def _unlabelled_needs_rotation(self) -> PretrainParams:
        if self.unlabelled and self.task != "rotation":
            raise ValueError(
                f"pretrain.unlabelled lists {len(self.unlabelled)} raster(s), but only task "
                f"rotation learns from imagery without labels (pretrain.task is {self.task!r})"
            )
        return self

    def weights_path(self, arch: str) -> Path:
        return self.out_dir / f"{arch}.safetensors"

    def meta_path(self, arch: str) -> Path:
        return self.out_dir / f"{arch}.json"


# --------------------------------------------------------------------------------------- train
class ThinRoadParams(_Section):
    """Road pixels weighted up by how narrow their road is (pipeline/thin_roads.py); off by
    default."""

    max_weight: float = Field(
        1.0,
        ge=1,
        description="Largest loss weight of a road pixel: a road pixel weighs reference_width_m / "
        "the width of its road, between 1 and this; 1 = off",
    )
    reference_width_m: float = Field(
        8.0,
        gt=0,
        description="Roads at least this wide weigh 1 per pixel; narrower ones more, so every metre "
        "of road counts about alike",
    )


class LabelNoiseParams(_Section):
    """Loss weights for labels that miss roads or draw them at a guessed width (OSM-derived
    labels); both off by default (pipeline/label_noise.py)."""

    far_positive_weight: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Loss weight of a background pixel farther than far_from_label_m from any road "
        "label that the model already calls road (probability >= confidence): a likely road the "
        "labels miss; 1 = off, 0 = ignored",
    )
    far_from_label_m: float = Field(
        10.0,
        gt=0,
        description="Distance from the nearest road label beyond which far_positive_weight applies",
    )
    confidence: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Probability from which a far background pixel counts as a positive",
    )
    edge_band_m: float = Field(
        0.0,
        ge=0,
        description="Ignore background pixels within this distance of a road label (labels drawn "
        "at a fixed width); 0 = off",
    )


class TrainParams(_Section):
    encoder: str = Field(
        "resnet18", description="Zoo backbone used as U-Net encoder (vgg*, resnet*, googlenet)"
    )
    encoder_weights: Literal["repo", "none", "imagenet"] = Field(
        "repo", description="repo: this repository's pretrained backbone; imagenet needs internet"
    )
    out_dir: Path = Field(Path("models/unet"), description="Trained model folder")
    metrics_path: Path = Field(
        Path("metrics/train.json"),
        description="DVC metrics file: the best epoch's validation figures",
    )
    plot_path: Path = Field(Path("plots/train.csv"), description="DVC plot: one row per epoch")
    init_from: str | None = Field(
        None,
        description="Fine-tune: start from this trained model (a model folder or models:/NAME@ALIAS) "
        "instead of a fresh U-Net; encoder, bands and decoder must match, its normalisation is kept, "
        "encoder_weights is not used",
    )
    epochs: int = Field(8, ge=1, description="Training epochs")
    batch_size: int = Field(8, ge=1, description="Batch size")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    warmup_epochs: float = Field(
        0.5, ge=0, description="Linear warm-up, in epochs, before cosine decay"
    )
    loss: Literal["bce", "bce_dice", "bce_lovasz"] = Field(
        "bce",
        description="Per-pixel BCE (default), BCE + soft Dice, or BCE + Lovasz hinge (Berman 2018: a "
        "convex surrogate of IoU itself)",
    )
    pos_weight: float = Field(1.0, gt=0, description="BCE weight of the road class")
    negative_weight: float = Field(
        1.0,
        ge=1,
        description="Loss weight of background the labels mark as a hard negative (a scene's "
        "`negatives` vectors: railways, river banks, anything that looks like road and is not); "
        "1: as any background",
    )
    decoder_upsampling: Literal["interp", "transposed"] = Field(
        "interp", description="Decoder upsampling: smp's interpolation or transposed convolutions"
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the segmentation head")
    decoder_attention: Literal["none", "scse"] = Field(
        "none",
        description="Attention in each decoder block: none, or smp's scSE (channel + spatial squeeze-excitation)",
    )
    decoder_channels: list[PositiveInt] = Field(
        default_factory=lambda: list(DECODER_CHANNELS),
        min_length=5,
        max_length=5,
        description="Output channels of the five U-Net decoder blocks, deepest first (smp's "
        "decoder_channels); narrower costs less per step, most of it in the two full-resolution blocks",
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the weights (decay per optimiser step, "
        "warmed up as min(decay, (1+t)/(10+t))); validation, the best checkpoint and the saved model "
        "use the average; null = off",
    )
    normalisation: Literal["dataset", "percentile"] = Field(
        "dataset",
        description="dataset: the train chips' mean/std; percentile: each scene (and each raster "
        "predicted) stretched between its own 2nd and 98th band percentiles first, so imagery "
        "from a darker or flatter sensor maps to the same range; stored in the model",
    )
    augment: bool = Field(True, description="Dihedral flips/rotations and per-band jitter")
    colour_jitter: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="With augment: each band's brightness shifted by up to +-s standard deviations, "
        "its contrast and gamma scaled by 1 +- s, drawn per band (so hues shift too); larger "
        "values train a model meant for other sensors",
    )
    scale_jitter: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="With augment: zoom each chip by a factor log-uniform in [1/(1+s), 1+s] "
        "about its centre (image, mask and nodata alike); 0 = off",
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after N epochs without val IoU gain"
    )
    label_noise: LabelNoiseParams = Field(
        default_factory=LabelNoiseParams,
        description="Loss weights that tolerate labels with omissions (OSM); off by default",
    )
    thin_roads: ThinRoadParams = Field(
        default_factory=ThinRoadParams,
        description="Loss weights that count narrow roads per metre rather than per pixel; off by default",
    )
    road_sampling: float = Field(
        0.0,
        ge=0,
        description="Draw each epoch's chips with replacement, chip i with weight 1 + road_sampling "
        "x its road fraction / the mean road fraction, so chips with more road are seen more "
        "often and chips without road (the false alarms) still are; 0: every chip once per epoch",
    )
    max_batches_per_epoch: int | None = Field(
        None,
        ge=1,
        description="Cap batches per epoch for a quick run (an epoch is then a random sample "
        "of the chips); null: every chip once per epoch",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    precision: Precision = Field(
        "auto",
        description="Autocast precision; auto: bf16 on CUDA and on CPUs with native bf16 (AMX / AVX-512 BF16), else fp32",
    )
    seed: int = Field(0, description="Seed")

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir.parent / "checkpoints" / "unet_last.pt"


# ------------------------------------------------------------------------------------ evaluate
class InferenceParams(_Section):
    """The window grid and forward passes: the same keys in params.yaml's evaluate and predict
    sections, which run the same code (``predict.predict_raster``)."""

    window: int = Field(512, ge=32, description="Window side in pixels (multiple of 32)")
    overlap: int = Field(64, ge=0, description="Overlap between neighbouring windows in pixels")
    batch_size: int | None = Field(
        None, ge=1, description="Windows per forward pass (default: 2 on CPU, fitted to GPU memory)"
    )
    precision: Precision = Field(
        "auto",
        description="Autocast precision; auto: bf16 on CUDA, fp32 on CPU (bf16 there is faster but "
        "makes pixels depend on the thread count by a few 1/254 steps)",
    )


class EvaluateParams(InferenceParams):
    tta: bool = Field(
        False,
        description="Score predictions averaged over the eight dihedral transforms (as predict --tta; "
        "8x the inference time), cut at a threshold chosen the same way on the validation chips "
        "and kept in model.json (threshold_tta) for predict --tta",
    )
    relaxed_slack_px: int = Field(
        3, ge=0, description="Slack of relaxed precision/recall (Mnih 2013: 3)"
    )
    class_attribute: str | None = Field(
        None,
        description="Road vector attribute to report recall by (e.g. OSM's highway, the synthetic "
        "scenes' road_class); null: off",
    )
    metrics_path: Path = Field(Path("metrics/eval.json"), description="DVC metrics file")
    plots_dir: Path = Field(Path("plots"), description="DVC plots folder")
    reports_dir: Path = Field(Path("reports"), description="Error maps and quicklooks")
    release_dir: Path = Field(
        Path("models/release"),
        description="The evaluated model: train's output with its test metrics in model.json; "
        "what the register stage registers",
    )


# ------------------------------------------------------------------------------------- network
class NetworkParams(_Section):
    """Probability raster -> road network (``pipeline network``, ``predict --network``,
    evaluate). Cleaning distances are in metres on the ground; grid sizes in pixels."""

    threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Road where probability >= this; null: the raster's `threshold` tag (predict "
        "writes the model's), else the model's threshold",
    )
    block_size: int = Field(
        2048,
        ge=64,
        description="Pixels a side read and traced at a time (a multiple of skeleton_tile)",
    )
    skeleton_tile: int = Field(
        1024,
        ge=32,
        description="Pixels a side of the fixed grid the mask is thinned on, each tile with "
        "skeleton_halo_px of context: the skeleton does not depend on block_size",
    )
    skeleton_halo_px: int = Field(
        64, ge=8, description="Context around each skeleton tile (more than half the widest road)"
    )
    workers: int = Field(
        1,
        ge=1,
        description="Dask worker processes that thin and trace blocks (1: in this process, "
        "thinning a block per core on up to 4 threads); the network is the same for any number",
    )
    seam_margin_px: int = Field(
        32, ge=4, description="Skeleton seen beyond a block's edges when it is traced (seam joins)"
    )
    hole_max_m2: float = Field(
        30.0, ge=0, description="Holes in the road mask up to this area are filled before thinning"
    )
    repair: bool = Field(
        True, description="Clean the raw skeleton graph (the steps below); false: raw graph"
    )
    junction_merge_m: float = Field(
        6.0, ge=0, description="Junction nodes closer than this become one node"
    )
    spur_min_m: float = Field(
        20.0, ge=0, description="Dead ends shorter than this, off a junction, are pruned"
    )
    min_component_m: float = Field(
        25.0, ge=0, description="Pieces of network shorter than this in all are dropped"
    )
    bridge_max_m: float = Field(
        25.0, ge=0, description="Loose ends are joined across gaps up to this long (0: off)"
    )
    bridge_min_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="A gap is bridged only if the probability along the straight line stays at "
        "or above this fraction of the threshold (a road under a tree or shadow): 0.1 at 0.5",
    )
    bridge_min_detour: float = Field(
        3.0,
        ge=1,
        description="Bridge only where the network path between the two points is at least this "
        "many times the gap (or missing): no shortcuts along the same road",
    )
    extend_ends_m: float = Field(
        10.0,
        ge=0,
        description="Dead ends are carried on along their direction, up to this far, while the "
        "probability stays above the threshold (thinning stops short of a road's end)",
    )
    simplify_m: float = Field(1.0, ge=0, description="Douglas-Peucker tolerance of the edges")

    @model_validator(mode="after")
    def _tiles_fit(self) -> NetworkParams:
        if self.block_size % self.skeleton_tile:
            raise ValueError(
                f"network.block_size {self.block_size} must be a multiple of "
                f"network.skeleton_tile {self.skeleton_tile}"
            )
        return self


# ------------------------------------------------------------------------------- graph metrics
class GraphMetricsParams(_Section):
    """APLS (SpaceNet, CosmiQ apls.py) and TOPO (Biagioni and Eriksson 2012), all in metres."""

    apls_control_spacing_m: float = Field(
        50.0, gt=0, description="APLS: control points along edges this far apart (SpaceNet: 50)"
    )
    apls_snap_m: float = Field(
        4.0,
        ge=0,
        description="APLS: a control point further than this from the other graph is missing (4)",
    )
    apls_min_path_m: float = Field(
        10.0, ge=0, description="APLS: pairs whose truth path is shorter are left out (10)"
    )
    apls_curved_eps: float | None = Field(
        None,
        ge=0,
        description="APLS: control points only on edges at least this curved (apls.py is_curved_eps); null: on every edge",
    )
    apls_max_sources: int | None = Field(
        None,
        ge=1,
        description="APLS: score paths from a seeded sample of this many control points; null: all",
    )
    simplify: bool = Field(
        True,
        description="Merge the edges at nodes of degree two first (scores then do not depend on edge cuts)",
    )
    topo_seed_spacing_m: float = Field(50.0, gt=0, description="TOPO: seeds along the truth (50)")
    topo_seed_match_m: float = Field(
        11.0, ge=0, description="TOPO: a seed's proposal start must be this close (11)"
    )
    topo_radius_m: float = Field(
        300.0,
        gt=0,
        description="TOPO: walk each graph this far from the seed (300; 150 on small tiles)",
    )
    topo_interval_m: float = Field(
        5.0, gt=0, description="TOPO: holes and marbles at most this far apart along edges (5)"
    )
    topo_match_m: float = Field(
        5.0, ge=0, description="TOPO: a hole and a marble match when this close, one to one (5)"
    )
    topo_max_seeds: int | None = Field(
        None, ge=1, description="TOPO: a seeded sample of this many seeds; null: all"
    )
    seed: int = Field(0, description="Seed of the samples")


# ------------------------------------------------------------------------------------ register
class RegisterParams(_Section):
    model_name: str = Field("road-unet", description="Registered model name")
    experiment: str = Field("roadseg", description="MLflow experiment")
    tracking_uri: str = Field(
        DEFAULT_TRACKING_URI, description="Used unless MLFLOW_TRACKING_URI is set"
    )
    receipt_path: Path = Field(Path("models/registered.json"), description="What was registered")


# ------------------------------------------------------------------------------------- predict
class PredictParams(InferenceParams):
    model: str | None = Field(
        None, description="Model URI or folder; None: models:/<register.model_name>@champion"
    )
    windows_per_task: int = Field(4, ge=1, description="Windows per Dask task")
    workers: int | None = Field(None, ge=1, description="Local workers (default: GPUs or cores)")
    device: Device = Field("auto", description="Torch device")
    resample: bool = Field(
        True,
        description="Predict a raster whose pixel size differs from the model's (by more than "
        "gsd_tolerance, or whose pixels are that much taller than wide) at the model's pixel "
        "size, window by window, each axis on its own scale; false: as it is, with a warning",
    )
    gsd_tolerance: float = Field(
        1.25, ge=1, description="Pixel size ratio (raster / model) tolerated without resampling"
    )
    pixel_size_m: float | None = Field(
        None,
        gt=0,
        description="Pixel size in metres of rasters without georeferencing (the PNG/JPEG tiles "
        "public sets ship: Massachusetts 1, DeepGlobe 0.5), so that they are resampled to the "
        "model's as georeferenced ones are; null: such a raster is read at the model's pixel "
        "size, with a warning. Georeferenced rasters keep their own",
    )
    fill: float | None = Field(
        None,
        description="Pixels holding this value on every band are nodata, beside what the raster "
        "declares (--nodata): a fill colour a PNG/JPEG tile cannot declare (Massachusetts: "
        "255); null: only what the raster declares",
    )
    vector_min_spur_m: float = Field(
        10.0, ge=0, description="--vectors: prune dead-end branches shorter than this"
    )
    vector_simplify_m: float = Field(
        1.0, ge=0, description="--vectors: simplification tolerance of the centrelines"
    )
    tta: bool = Field(
        False,
        description="Average the eight dihedral transforms (8x the model time; what evaluate.tta "
        "scores), cut at the model's threshold_tta when evaluate chose one; --tta / --no-tta "
        "override it",
    )


class PredictOptions(PredictParams):
    """Everything that says how ``predict.predict_raster`` runs: params.yaml's predict section
    with the command's flags over it (:meth:`from_params`, the one place they meet), or the
    evaluate stage's settings (``evaluate.predict_scene``). Typed and validated once; the
    client plans with it and hands its worker part on in each task (``predict_task.PredictJob``).
    What is predicted and where its outputs go are ``predict_raster``'s own arguments."""

    model: str | Path = Field(
        "models:/road-unet@champion",
        description="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a model folder",
    )
    tracking_default: str = Field(
        DEFAULT_TRACKING_URI,
        description="Tracking URI a models:/ URI is resolved in, unless MLFLOW_TRACKING_URI is set",
    )
    dtype: OutputDtype = Field(
        "uint8",
        description="Output samples: uint8 (p = value / 254, 255 = nodata) or float32 (NaN = nodata)",
    )
    block_size: int = Field(
        1024,
        gt=0,
        multiple_of=256,
        description="Side of the output blocks written as they complete; changes memory and "
        "write granularity, never pixel values",
    )
    bands: list[int] | dict[str, int] | None = Field(
        None,
        description="The raster's bands for the model's: 1-based indexes in the model's order, or "
        "name -> index; None: by band name, else in file order (raster.band_plan)",
    )
    network_params: NetworkParams = Field(
        default_factory=NetworkParams, description="How --network traces and cleans the network"
    )
    scheduler: str | None = Field(
        None, description="Address of a running Dask scheduler; None: a local cluster of its own"
    )
    overwrite: bool = Field(False, description="Replace existing outputs")
    progress: bool = Field(True, description="Print the plan, a progress bar and an estimate")

    @classmethod
    def from_params(cls, params: Params | None, flags: Mapping[str, Any]) -> PredictOptions:
        """params.yaml's predict section (its defaults without a params.yaml) with each flag
        that was given (not None) over it. The model defaults to register.model_name's
        champion, resolved in register.tracking_uri; ``--network`` uses the network section."""
        predict = params.predict if params else PredictParams()
        register = params.register if params else RegisterParams()
        settings = predict.model_dump(exclude={"model"})
        settings.update(
            model=predict.model or f"models:/{register.model_name}@champion",
            tracking_default=register.tracking_uri,
            network_params=params.network if params else NetworkParams(),
        )
        settings.update({key: value for key, value in flags.items() if value is not None})
        try:
            return cls.model_validate(settings)
        except ValidationError as e:  # params.yaml was valid: a flag's value is not
            wrong = "; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
            )
            raise ConfigError(f"invalid predict options: {wrong}") from None


with warnings.catch_warnings():
    # "register" is also a classmethod of ABCMeta; as a field name it is harmless.
    warnings.filterwarnings("ignore", message='Field name "register"')

    class Params(_Section):
        synth: SynthParams
        data: DataParams
        tile: TileParams = Field(default_factory=TileParams)
        pretrain: PretrainParams = Field(default_factory=PretrainParams)
        train: TrainParams = Field(default_factory=TrainParams)
        evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
        register: RegisterParams = Field(default_factory=RegisterParams)
        predict: PredictParams = Field(default_factory=PredictParams)
        label_check: LabelCheckParams = Field(default_factory=LabelCheckParams)
        network: NetworkParams = Field(default_factory=NetworkParams)

        @model_validator(mode="after")
        def _encoder_is_pretrained(self) -> Params:
            if (
                self.train.encoder_weights == "repo"
                and self.train.encoder not in self.pretrain.archs
            ):
                raise ValueError(
                    f"train.encoder {self.train.encoder!r} uses repo weights but is not in pretrain.archs "
                    f"{self.pretrain.archs}; add it there or set train.encoder_weights: none"
                )
            return self


def synth_scenes(synth: SynthParams) -> list[SceneSource]:
    """The synthetic scenes as data.scenes entries: their files and split (split: none left
    out), in synth.scenes order with the test scenes last (scene order decides chip order,
    hence the training run; it is the order the demo once listed them in by hand)."""
    specs = [s for s in synth.scenes if s.split != "none"]
    out = []
    for spec in sorted(specs, key=lambda s: s.split == "test"):  # stable: synth order otherwise
        image, roads, landcover, negatives = synth.scene_files(spec.name)
        out.append(
            SceneSource(
                name=spec.name,
                image=image,
                roads=roads,
                landcover=landcover,
                negatives=negatives,
                split=spec.split,
            )
        )
    return out


def expand_synth_scenes(params: Params) -> Params:
    """``params`` with ``{synth: all}`` in data.scenes replaced by :func:`synth_scenes`, so
    every stage sees plain scene entries. Raises ValueError where that leaves no scene or two
    scenes of one name."""
    entries = params.data.scenes
    if not any(isinstance(e, SynthScenesEntry) for e in entries):
        return params
    if not params.synth.scenes:
        raise ValueError("data.scenes: {synth: all} takes synth.scenes, which is empty")
    synthetic = synth_scenes(params.synth)
    if not synthetic and len(entries) == 1:
        raise ValueError(
            "data.scenes: {synth: all} is the only entry and every synth scene has split: none, "
            "so no stage has a scene"
        )
    names = {s.name for s in synthetic}
    for i, entry in enumerate(entries):
        if not isinstance(entry, SynthScenesEntry) and entry.name in names:
            raise ValueError(
                f"data.scenes.{i}: scene {entry.name!r} is also a synthetic scene "
                "({synth: all}); rename one of them"
            )
    scenes: list[SceneEntry] = []
    for entry in entries:
        scenes.extend(synthetic if isinstance(entry, SynthScenesEntry) else [entry])
    return params.model_copy(update={"data": params.data.model_copy(update={"scenes": scenes})})


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; relative paths stay relative to the working directory."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: file not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of stage sections")
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        lines = [f"{path}: invalid parameters"]
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
    try:
        return expand_synth_scenes(params)
    except ValueError as e:
        raise ConfigError(f"{path}: invalid parameters\n  {e}") from None
