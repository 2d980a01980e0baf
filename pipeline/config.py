"""Typed, validated configuration: ``params.yaml`` -> :class:`Params`.

One pydantic model per stage, ``extra="forbid"`` everywhere so a typo in params.yaml is an
error naming the key, and every field carries a description. Stage functions receive these
objects; nothing else in the project reads YAML. Derived output paths live here, in one place.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.chip_format import INDEX_FILE, STATS_FILE

# Autocast precision of training and inference (pipeline.model.autocast_dtype says what auto picks)
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

BAND_NAMES_RGBN = ["red", "green", "blue", "nir"]


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


# --------------------------------------------------------------------------------------- synth
class SynthSceneSpec(_Section):
    name: str = Field(description="Scene id; files are <out_dir>/<name>.tif and <name>.roads.gpkg")
    seed: int = Field(description="Random seed: the same seed gives the same scene, bit for bit")


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


# ---------------------------------------------------------------------------------------- data
class SceneSource(_Section):
    """One input scene: an image plus road vectors or a label raster."""

    name: str = Field(description="Scene id, unique")
    image: Path = Field(description="Any GDAL raster (GeoTIFF, COG, VRT) with a CRS")
    roads: Path | None = Field(
        None, description="Road vectors, any OGR format (GeoPackage, GeoJSON, Shapefile)"
    )
    labels: Path | None = Field(None, description="Label raster on the image grid (road = 1)")
    landcover: Path | None = Field(
        None, description="Optional land-cover class raster (for pretraining)"
    )
    split: Literal["auto", "train", "val", "test"] = Field(
        "auto", description="'test' holds the whole scene out; 'auto' assigns area blocks"
    )

    @model_validator(mode="after")
    def _one_label_source(self) -> SceneSource:
        if (self.roads is None) == (self.labels is None):
            raise ValueError(f"scene {self.name!r}: give exactly one of 'roads' or 'labels'")
        return self


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


class TileSetSource(_Section):
    """Many image/label tiles as one entry (a public tile set such as Massachusetts Roads or
    DeepGlobe): each tile becomes a scene ``<name>_<stem>``, split whole (pipeline/tilesets.py)."""

    name: str = Field(description="Tile set id, unique; its tiles are scenes <name>_<stem>")
    root: Path = Field(description="Folder of the tile set (paths below are relative to it)")
    images: str = Field(
        description="Glob of the images below root, one '*' in the file name: the tile's "
        "{stem} (e.g. 'images/*.png', 'sat/*.tiff', 'train/*_sat.jpg')"
    )
    labels: str = Field(
        description="Label image of a tile below root, with {stem} (e.g. 'masks/{stem}.png', "
        "'map/{stem}.tif', 'train/{stem}_mask.png')"
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

    @field_validator("images")
    @classmethod
    def _one_star(cls, v: str) -> str:
        if Path(v).name.count("*") != 1 or any(c in Path(v).name for c in "?["):
            raise ValueError(
                f"images {v!r}: the file name part needs exactly one '*' (the tile's stem) "
                "and no other wildcard"
            )
        return v

    @field_validator("labels")
    @classmethod
    def _has_stem(cls, v: str) -> str:
        if "{stem}" not in v:
            raise ValueError(f"labels {v!r}: needs {{stem}}, e.g. 'masks/{{stem}}.png'")
        return v


def _scene_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "tileset" if "images" in v else "scene"
    return "tileset" if isinstance(v, TileSetSource) else "scene"


SceneEntry = Annotated[
    Annotated[SceneSource, Tag("scene")] | Annotated[TileSetSource, Tag("tileset")],
    Discriminator(_scene_kind),
]


class DataParams(_Section):
    scenes: list[SceneEntry] = Field(
        description="Input scenes (the synth output by default) and tile sets (entries with "
        "'images')"
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

    @field_validator("scenes")
    @classmethod
    def _unique_names(cls, v: list[SceneEntry]) -> list[SceneEntry]:
        names = [s.name for s in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate scene names: {sorted(dup)}")
        if not v:
            raise ValueError("at least one scene is needed")
        return v


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

    @field_validator("chip_size")
    @classmethod
    def _div32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"chip_size must be a multiple of 32 (U-Net depth 5), got {v}")
        return v

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
        None, ge=1, description="Cap batches per epoch (tests)"
    )
    seed: int = Field(0, description="Seed")

    def weights_path(self, arch: str) -> Path:
        return self.out_dir / f"{arch}.safetensors"

    def meta_path(self, arch: str) -> Path:
        return self.out_dir / f"{arch}.json"


# --------------------------------------------------------------------------------------- train
class TrainParams(_Section):
    encoder: str = Field(
        "resnet18", description="Zoo backbone used as U-Net encoder (vgg*, resnet*, googlenet)"
    )
    encoder_weights: Literal["repo", "none", "imagenet"] = Field(
        "repo", description="repo: this repository's pretrained backbone; imagenet needs internet"
    )
    out_dir: Path = Field(Path("models/unet"), description="Trained model folder")
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
    decoder_upsampling: Literal["interp", "transposed"] = Field(
        "interp", description="Decoder upsampling: smp's interpolation or transposed convolutions"
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the segmentation head")
    decoder_attention: Literal["none", "scse"] = Field(
        "none",
        description="Attention in each decoder block: none, or smp's scSE (channel + spatial squeeze-excitation)",
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the weights (decay per optimiser step, "
        "warmed up as min(decay, (1+t)/(10+t))); validation, the best checkpoint and the saved model "
        "use the average; null = off",
    )
    augment: bool = Field(True, description="Dihedral flips/rotations and per-band jitter")
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
    max_batches_per_epoch: int | None = Field(
        None, ge=1, description="Cap batches per epoch (tests)"
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
class EvaluateParams(_Section):
    window: int = Field(512, ge=32, description="Prediction window (multiple of 32)")
    overlap: int = Field(64, ge=0, description="Overlap between windows in pixels")
    batch_size: int | None = Field(
        None, ge=1, description="Windows per forward pass (default: 2 on CPU, fitted to GPU memory)"
    )
    precision: Precision = Field(
        "auto", description="Inference autocast precision (as predict.precision)"
    )
    tta: bool = Field(
        False,
        description="Score predictions averaged over the eight dihedral transforms (as predict --tta; "
        "8x the inference time)",
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


# ------------------------------------------------------------------------------------ register
class RegisterParams(_Section):
    model_name: str = Field("road-unet", description="Registered model name")
    experiment: str = Field("roadseg", description="MLflow experiment")
    tracking_uri: str = Field(
        "sqlite:///mlflow.db", description="Used unless MLFLOW_TRACKING_URI is set"
    )
    receipt_path: Path = Field(Path("models/registered.json"), description="What was registered")


# ------------------------------------------------------------------------------------- predict
class PredictParams(_Section):
    model: str | None = Field(
        None, description="Model URI or folder; None: models:/<register.model_name>@champion"
    )
    window: int = Field(512, ge=32, description="Window side in pixels (multiple of 32)")
    overlap: int = Field(64, ge=0, description="Overlap between neighbouring windows")
    batch_size: int | None = Field(
        None, ge=1, description="Windows per forward pass (default: 2 on CPU, fitted to GPU memory)"
    )
    windows_per_task: int = Field(4, ge=1, description="Windows per Dask task")
    workers: int | None = Field(None, ge=1, description="Local workers (default: GPUs or cores)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Torch device")
    precision: Precision = Field(
        "auto",
        description="Autocast precision; auto: bf16 on CUDA, fp32 on CPU (bf16 there is faster but "
        "makes pixels depend on the thread count by a few 1/254 steps)",
    )
    vector_min_spur_m: float = Field(
        10.0, ge=0, description="--vectors: prune dead-end branches shorter than this"
    )
    vector_simplify_m: float = Field(
        1.0, ge=0, description="--vectors: simplification tolerance of the centrelines"
    )


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
        return Params.model_validate(raw)
    except ValidationError as e:
        lines = [f"{path}: invalid parameters"]
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
