"""Class names and palettes: the one home of every label set (SPEC §6.5).

NYU40: index = class id, 0 = unlabeled (black); the GenPercept seg model regresses this colour map.
ADE20K (150 classes, SceneParsing ids 1..150 minus 1) and Cityscapes (the 19 train ids): the label sets
of the Meta Prompts segmentation models, chosen by a checkpoint spec's `labels`; their colours are the
datasets' standard palettes. Id 255 means ignore / no class in every set.
"""

from dataclasses import dataclass

import numpy as np

from .errors import GenPerceptError

IGNORE_ID = 255  # no class: GT pixels that are not scored, prediction pixels without a class

NYU40_CLASSES = (
    "unlabeled", "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow",
    "mirror", "floormat", "clothes", "ceiling", "books", "refrigerator", "television", "paper",
    "towel", "showercurtain", "box", "whiteboard", "person", "nightstand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)

# uint8 [41, 3]
NYU40_PALETTE = np.array(
    [
        (0, 0, 0), (174, 199, 232), (152, 223, 138), (31, 119, 180), (255, 187, 120),
        (188, 189, 34), (140, 86, 75), (255, 152, 150), (214, 39, 40), (197, 176, 213),
        (148, 103, 189), (196, 156, 148), (23, 190, 207), (178, 76, 76), (247, 182, 210),
        (66, 188, 102), (219, 219, 141), (140, 57, 197), (202, 185, 52), (51, 176, 203),
        (200, 54, 131), (92, 193, 61), (78, 71, 183), (172, 114, 82), (255, 127, 14),
        (91, 163, 138), (153, 98, 156), (140, 153, 101), (158, 218, 229), (100, 125, 154),
        (178, 127, 135), (120, 185, 128), (146, 111, 194), (44, 160, 44), (112, 128, 144),
        (96, 207, 209), (227, 119, 194), (213, 92, 176), (94, 106, 211), (82, 84, 163),
        (100, 85, 144),
    ],
    dtype=np.uint8,
)


def colors_to_labels(rgb: np.ndarray, metric: str = "l1") -> np.ndarray:
    """Nearest-palette decoding of a colour map.

    rgb: [H, W, 3], uint8 in 0..255 or float in [0, 1]. metric: "l1" (default) or "l2" (squared L2).
    Returns uint8 [H, W] class ids (0 = unlabeled); ties go to the lowest id.
    """
    if metric not in ("l1", "l2"):
        raise ValueError(f"metric must be 'l1' or 'l2', got {metric!r}")
    rgb = np.asarray(rgb)
    values = rgb.astype(np.float32) if rgb.dtype == np.uint8 else rgb.astype(np.float32) * 255.0
    flat = values.reshape(-1, 1, 3)
    palette = NYU40_PALETTE.astype(np.float32)[None]  # [1, 41, 3]
    labels = np.empty(flat.shape[0], dtype=np.uint8)
    for start in range(0, flat.shape[0], 1 << 16):  # chunks bound memory to ~32 MB
        diff = flat[start:start + (1 << 16)] - palette
        dist = np.abs(diff).sum(-1) if metric == "l1" else (diff * diff).sum(-1)
        labels[start:start + (1 << 16)] = dist.argmin(-1)
    return labels.reshape(rgb.shape[:2])


def labels_to_colors(labels: np.ndarray) -> np.ndarray:
    """uint8 [H, W] class ids -> uint8 [H, W, 3] palette colours (ids outside 0..40 -> black)."""
    labels = np.asarray(labels)
    safe = np.where((labels >= 0) & (labels < len(NYU40_PALETTE)), labels, 0)
    return NYU40_PALETTE[safe]


ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# uint8 [150, 3], index = class id
ADE20K_PALETTE = np.array(
    [
        (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
        (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
        (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
        (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
        (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
        (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
        (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
        (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
        (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245),
        (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
        (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0),
        (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
        (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82),
        (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0),
        (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
        (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
        (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),
        (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
        (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0),
        (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
        (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
        (25, 194, 194), (102, 255, 0), (92, 0, 255),
    ],
    dtype=np.uint8,
)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

# uint8 [19, 3], index = train id
CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)


@dataclass(frozen=True)
class LabelSet:
    """A semantic-segmentation label set: class id i is `classes[i]`, drawn as `palette[i]` (uint8 [K, 3])."""

    name: str
    classes: tuple[str, ...]
    palette: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def colors(self, ids: np.ndarray) -> np.ndarray:
        """Integer (or integral float) class ids [H, W] -> uint8 [H, W, 3]; 255 and unknown ids -> black."""
        ids = np.asarray(ids)
        known = (ids >= 0) & (ids < self.num_classes)
        rgb = self.palette[np.where(known, ids, 0).astype(np.int64)]
        rgb[~known] = 0
        return rgb


LABEL_SETS = {
    "ade20k": LabelSet("ade20k", ADE20K_CLASSES, ADE20K_PALETTE),
    "cityscapes": LabelSet("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
}


def get_label_set(name: str | None) -> LabelSet:
    """The label set `name` (a checkpoint spec's `labels`); GenPerceptError naming the known ones otherwise."""
    found = LABEL_SETS.get(name or "")
    if found is None:
        raise GenPerceptError(
            f"Unknown label set {name!r}; a segmentation checkpoint's labels must be one of: {', '.join(LABEL_SETS)}."
        )
    return found
