"""Which recipe a run uses, decided before its arguments are parsed, so the recipe's values are the parser's defaults.

``--recipe NAME`` names it. Without it, the demo data gets the method's ``demo`` recipe, and the user's data gets one
chosen from a cheap probe: the shorter side of the first readable training image, read from a stream of the training
split (nothing else is loaded). ``--image_size`` / ``--patch_size`` (run_mim.py's model flags) then resize the recipe's
encoder and crops. The probe needs only where the data is, so the few location flags are read from argv (or the
config file) first; everything is parsed once, afterwards, by ``arguments.parse_arguments``.
"""

import argparse
import copy
import json
import logging
from typing import NamedTuple

from ..data.images import to_rgb_image
from ..data.pipeline import undecoded_images
from ..data.sources import DEBIAN_NAME, EMBEDDED_NAME, data_files_mapping, load_image_dataset
from ..methods import get_method, recipe_owner
from ..methods.recipes import recipe_defaults

logger = logging.getLogger(__name__)

DEMO_DATASETS = (EMBEDDED_NAME, DEBIAN_NAME)
# The flags read before parsing: the recipe's name and where the training images are (all take one value, but
# --data_files, which takes several).
LOCATION_FLAGS = ("method", "recipe", "dataset_name", "dataset_config_name", "train_dir", "data_files", "split",
                  "image_column_name", "model_name_or_path", "config_name", "image_size", "patch_size")  # fmt: skip
PROBE_ROWS = 8  # training images the probe may try before it gives up (unreadable ones are skipped)


class RecipeChoice(NamedTuple):
    """The recipe a run uses: its method, name (a description when chosen from the images), values, and whether it
    was chosen without ``--recipe``."""

    method: str
    name: str
    values: dict
    automatic: bool


def is_config_file(argv: list[str]) -> bool:
    """True when argv is one JSON/YAML file holding every argument."""
    return len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml"))


def read_config_file(path: str) -> dict:
    """The ``{argument: value}`` mapping of a JSON or YAML config file."""
    import yaml

    with open(path) as handle:
        values = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values")
    return values


def location_flags(argv: list[str]) -> dict:
    """The values of ``LOCATION_FLAGS`` in argv (``--name VALUE``, ``--name=VALUE``, ``--name-with-dashes``), None
    for those absent; every other token is left to the parser."""
    reader = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in LOCATION_FLAGS:
        spellings = {f"--{name}", f"--{name.replace('_', '-')}"}
        reader.add_argument(*sorted(spellings), dest=name, nargs="+" if name == "data_files" else None)
    known, _ = reader.parse_known_args(argv)
    values = vars(known)
    for name in ("image_size", "patch_size"):
        values[name] = int(values[name]) if values[name] is not None else None
    return values


def uses_own_data(location: dict) -> bool:
    """True unless the run trains on one of the demo datasets."""
    return bool(location.get("train_dir") or location.get("data_files")) or (
        location.get("dataset_name") or EMBEDDED_NAME) not in DEMO_DATASETS  # fmt: skip


def probe_image_side(location: dict) -> int:
    """The shorter side of the first readable training image, read from a stream of the training split.

    Raises:
        ValueError: None of the first ``PROBE_ROWS`` images could be read (or the data is missing, see
            ``load_image_dataset``).
    """
    column = location.get("image_column_name") or "image"
    files = data_files_mapping(location.get("train_dir"), None, location.get("data_files"))
    stream = load_image_dataset(location.get("dataset_name") or EMBEDDED_NAME, location.get("dataset_config_name"),
                                split=location.get("split") or "train", image_column=column, streaming=True,
                                data_files=files)  # fmt: skip
    for row in undecoded_images(stream, column).take(PROBE_ROWS):  # bytes / paths: an unreadable file is skipped
        image = to_rgb_image(row[column])
        if image is not None:
            return min(image.size)
    raise ValueError(f"none of the first {PROBE_ROWS} training images in column {column!r} could be read")


# The demo's encoder sees 7 x 7 = 49 tokens per global crop (28 px, patch 4); the automatic recipe keeps a user's
# small images near that grid: the largest patch that still leaves at least 6 x 6 tokens, so 36 to 144 tokens per
# crop from 24 to 160 px. Measured (benchmarks/auto_patch.py, docs/training.md "Small images: which patch size"): on a
# 56-px Fashion-MNIST folder, 800 steps, patch 8 reached 64.6 % k-NN in 378 s of training, patch 4 66.6 % in 1494 s.
# Lower MIN_GRID for speed, raise it for detail.
DEMO_TOKENS = 49
MIN_GRID = 6
SMALL_IMAGE_PATCHES = (4, 8, 16)


def small_image_patch(side: int) -> int:
    """The largest patch of (4, 8, 16) that leaves a ``side``-px crop at least ``MIN_GRID`` x ``MIN_GRID`` tokens
    (4 below that): up to 47 px -> 4, 48-95 px -> 8, 96 px and more -> 16."""
    return max([p for p in SMALL_IMAGE_PATCHES if side // p >= MIN_GRID], default=SMALL_IMAGE_PATCHES[0])


def recipe_for_images(method: str, side: int) -> tuple[str, dict]:
    """(name, recipe) chosen from the training images' side when no --recipe is given on the user's data: small
    images (<= 160 px) get the demo's model at their own resolution with the patch that keeps its token grid
    (``small_image_patch``); larger ones SOP's ViT-S/16 ImageNet recipe (other methods: their demo model at 224 px,
    patch 16)."""
    spec = get_method(method)
    if side > 160 and "vit_small_imagenet" in spec.recipes:
        return "vit_small_imagenet", spec.recipes["vit_small_imagenet"]
    patch = small_image_patch(side) if side <= 160 else 16
    crop = 224 if side > 160 else max(4 * patch, side // patch * patch)
    values = with_encoder_size(spec.recipes["demo"], crop, patch)
    values["data"].pop("dataset_name", None)  # the user's data, never the embedded demo set
    return f"demo model at {crop} px, patch {patch}", values


def grid_reason(values: dict) -> str:
    """Why a small-image recipe has its patch: its token grid against the demo's and the next smaller patch's."""
    encoder = values["model"].get("backbone_config", values["model"])
    crop, patch = encoder.get("image_size"), encoder.get("patch_size")
    if not crop or not patch or patch == SMALL_IMAGE_PATCHES[0] or patch not in SMALL_IMAGE_PATCHES:
        return ""
    smaller = SMALL_IMAGE_PATCHES[SMALL_IMAGE_PATCHES.index(patch) - 1]
    tokens, more = (crop // patch) ** 2, (crop // smaller) ** 2
    return (
        f" ({tokens} tokens per crop, the demo's model sees {DEMO_TOKENS}; patch {smaller} would give {more}, "
        f"{more / tokens:.0f}x the tokens per image)"
    )


def with_encoder_size(values: dict, image_size: int | None, patch_size: int | None) -> dict:
    """A copy of the recipe ``values`` whose encoder has this image and patch size (None keeps the recipe's), with
    global crops of the image size and local crops about half of it (a whole number of patches, at least two)."""
    values = copy.deepcopy(values)
    encoder = values["model"].get("backbone_config", values["model"])  # SOP: the config itself; lineage: its encoder
    if image_size is not None:
        encoder["image_size"] = image_size
    if patch_size is not None:
        encoder["patch_size"] = patch_size
    if image_size is not None:
        patch = encoder.get("patch_size", 16)
        values["data"].update(global_crop_size=image_size,
                              local_crop_size=max(patch * 2, image_size // 2 // patch * patch))  # fmt: skip
    return values


def choose_recipe(location: dict, probe: bool = True) -> RecipeChoice:
    """The recipe of a run whose location flags are ``location`` (see ``location_flags``); ``probe=False`` skips the
    image probe (``--help`` shows the demo's values then)."""
    method, name = location.get("method"), location.get("recipe")
    if name is not None:
        method, values = recipe_owner(name, method)
        choice = RecipeChoice(method, name, values, automatic=False)
    else:
        method = method or "sop"
        choice = RecipeChoice(method, "demo", get_method(method).recipes["demo"], automatic=True)
        brings_config = location.get("model_name_or_path") or location.get("config_name")
        if probe and uses_own_data(location) and not brings_config:
            side = probe_image_side(location)
            name, values = recipe_for_images(method, side)
            logger.info("no --recipe given: the training images are %d px, so the run uses %s%s (pass --recipe "
                        "to choose, --patch_size to change the grid; --help lists them)", side, name,
                        grid_reason(values))  # fmt: skip
            choice = RecipeChoice(method, name, values, automatic=True)
    if location.get("image_size") is not None or location.get("patch_size") is not None:
        values = with_encoder_size(choice.values, location.get("image_size"), location.get("patch_size"))
        choice = choice._replace(values=values)
    return choice


def parser_defaults(choice: RecipeChoice) -> dict:
    """The parser's defaults for a recipe: its data and training values, the method, the recipe and an output_dir
    named after them (``outputs/sop-demo``, ``outputs/massl-vit-small-imagenet``)."""
    short = choice.name.split(" ")[0].removeprefix(choice.method + "_").replace("_", "-")
    return {**recipe_defaults(choice.values), "method": choice.method, "recipe": choice.name,
            "output_dir": f"outputs/{choice.method}-{short}"}  # fmt: skip


__all__ = ["RecipeChoice", "choose_recipe", "location_flags", "parser_defaults", "probe_image_side",
           "recipe_for_images", "small_image_patch", "with_encoder_size"]  # fmt: skip
