"""The NYU40 palette used by the semantic-segmentation model (SPEC §6.5).

Index = class id, 0 = unlabeled (black). The seg model regresses this colour map.
"""

import numpy as np

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
