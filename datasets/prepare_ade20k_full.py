#!/usr/bin/env python3
"""ADE20K-847 (ADE20K_2021_17_01): validation images and 16-bit labels of the 847 classes of
``ade847.json``.

Input:  <root>/index_ade20k.pkl (a dict whose "filename" and "folder" lists name every image, e.g.
        "ADE_val_00000001.jpg" in "ADE20K_2021_17_01/images/ADE/validation/..."), each image's
        .jpg and its <stem>_seg.png, whose pixels encode the object class as R // 10 * 256 + G
        (0 = unlabelled; class c is entry c - 1 of the index's "objectnames").
Output: <root>/images_detectron2/validation/<stem>.jpg: the image, short side at most 512.
        <root>/annotations_detectron2/validation/<stem>.tif: uint16 TIFF, 0..846, 65535 = ignored,
        resized like the image (nearest neighbour).
"""
import functools
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from PIL import Image

from _common import argument_parser, datasets_root, require, run, save_label

IGNORE = 65535
MAX_SHORT_SIDE = 512

# The _seg.png class value of each class of ade847.json, in its order (the 847 classes of
# ADE20K_2021_17_01 that CAT-Seg and its predecessors evaluate, most frequent first).
CLASS_VALUES = [
    2978, 312, 2420, 2855, 2131, 976, 447, 165, 2377, 838,  # 0
    350, 1831, 1125, 3055, 401, 1610, 1910, 2684, 471, 687,  # 10
    774, 2473, 2264, 1735, 2994, 1564, 1276, 2178, 2329, 57,  # 20
    907, 913, 1395, 2138, 2272, 2128, 724, 155, 2053, 2380,  # 30
    689, 1788, 3087, 2530, 581, 2388, 2985, 2454, 2096, 137,  # 40
    294, 212, 2185, 524, 2212, 943, 1869, 2251, 2793, 2423,  # 50
    1121, 266, 1948, 1744, 783, 571, 627, 629, 491, 1374,  # 60
    223, 3016, 2598, 978, 239, 608, 236, 2531, 2616, 591,  # 70
    327, 2679, 1451, 181, 420, 2821, 1023, 855, 2733, 2928,  # 80
    1240, 77, 1969, 2880, 14, 1936, 2828, 631, 103, 3144,  # 90
    308, 1282, 38, 1563, 29, 480, 2569, 247, 187, 778,  # 100
    2243, 1941, 2833, 120, 95, 2836, 1087, 868, 1401, 220,  # 110
    47, 843, 123, 2537, 1927, 2337, 1702, 64, 249, 642,  # 120
    1981, 609, 2840, 2586, 1393, 2704, 1304, 146, 1494, 2739,  # 130
    389, 1551, 131, 738, 161, 747, 1919, 3109, 2179, 2989,  # 140
    206, 1930, 1002, 2254, 1708, 2526, 160, 2901, 2262, 44,  # 150
    597, 2235, 1260, 682, 2151, 3107, 432, 1098, 2932, 461,  # 160
    410, 2046, 533, 1481, 1858, 894, 1322, 1891, 1756, 49,  # 170
    1272, 1229, 2850, 1784, 2962, 259, 319, 954, 1974, 1013,  # 180
    2356, 97, 318, 592, 2885, 1017, 851, 1407, 1332, 303,  # 190
    2714, 1924, 1346, 1081, 1583, 2727, 2509, 2123, 602, 202,  # 200
    10, 490, 530, 2213, 1884, 2934, 2687, 387, 2668, 982,  # 210
    2547, 1474, 877, 1391, 414, 698, 2019, 2422, 3010, 1139,  # 220
    753, 1747, 2175, 1301, 1033, 1789, 2939, 2730, 1652, 90,  # 230
    1349, 2830, 1485, 2370, 2155, 118, 1402, 1957, 3130, 1197,  # 240
    52, 2688, 96, 762, 772, 1857, 2315, 1016, 643, 3105,  # 250
    1849, 791, 349, 6, 3114, 1587, 1233, 559, 1223, 3049,  # 260
    1943, 853, 709, 1390, 2748, 2007, 1546, 1513, 2600, 2538,  # 270
    1790, 194, 326, 2877, 594, 2036, 1662, 2366, 1754, 418,  # 280
    2553, 1951, 1963, 918, 2086, 997, 2731, 704, 1365, 569,  # 290
    3108, 948, 839, 63, 1305, 378, 2362, 2734, 2982, 2398,  # 300
    1119, 382, 1141, 1805, 3102, 2341, 1131, 2316, 2626, 3104,  # 310
    198, 1896, 2800, 190, 3131, 1463, 357, 929, 209, 912,  # 320
    1164, 1509, 2539, 3116, 2615, 1644, 818, 242, 2217, 2347,  # 330
    2686, 2300, 572, 789, 358, 2443, 101, 2969, 2692, 606,  # 340
    2339, 1533, 2060, 1782, 495, 371, 2707, 889, 3156, 2683,  # 350
    1499, 1135, 1619, 125, 2838, 2792, 1695, 746, 1343, 1370,  # 360
    2858, 145, 2565, 1892, 1103, 286, 170, 3073, 922, 1655,  # 370
    1602, 2160, 1151, 2176, 2239, 132, 394, 1424, 607, 700,  # 380
    116, 1425, 2676, 141, 2360, 2449, 897, 317, 2228, 2351,  # 390
    1543, 656, 1088, 373, 2472, 2892, 1740, 3067, 1367, 188,  # 400
    79, 1633, 1885, 677, 1779, 1297, 2334, 3027, 2735, 1791,  # 410
    2405, 1748, 2983, 3035, 2824, 2168, 385, 2148, 2465, 175,  # 420
    390, 268, 2722, 2857, 3088, 2926, 2782, 1378, 1934, 2072,  # 430
    2889, 944, 1158, 1383, 867, 2145, 1915, 361, 402, 482,  # 440
    2761, 300, 1554, 636, 260, 1186, 871, 2859, 2103, 208,  # 450
    2236, 2012, 2462, 1462, 2832, 2617, 1024, 1129, 18, 376,  # 460
    134, 407, 434, 2017, 2717, 2005, 2993, 1545, 1445, 2831,  # 470
    1161, 2411, 2949, 1769, 552, 2327, 939, 3013, 1986, 1486,  # 480
    2723, 1549, 2649, 1020, 392, 422, 1419, 2099, 2464, 3058,  # 490
    430, 675, 2941, 2955, 2355, 840, 32, 2338, 1232, 2834,  # 500
    2991, 2879, 444, 1657, 2246, 296, 245, 2661, 1202, 1714,  # 510
    251, 1095, 1828, 311, 2732, 947, 2115, 2738, 2525, 2194,  # 520
    634, 740, 2682, 2020, 1156, 1036, 1295, 1181, 3037, 1614,  # 530
    736, 893, 2047, 1274, 1361, 3036, 2606, 2797, 2022, 2876,  # 540
    2758, 472, 3028, 882, 1189, 743, 3122, 2401, 468, 1061,  # 550
    1523, 3059, 2843, 2853, 1529, 214, 3032, 3071, 277, 813,  # 560
    426, 1039, 727, 1508, 2490, 2299, 768, 1172, 537, 1847,  # 570
    1664, 1110, 1014, 662, 121, 227, 2410, 2165, 2696, 3005,  # 580
    1231, 635, 292, 2690, 65, 2607, 2574, 1188, 456, 2913,  # 590
    459, 1955, 827, 1111, 2412, 2997, 528, 366, 1863, 500,  # 600
    1001, 1958, 1441, 809, 210, 435, 718, 1674, 388, 1572,  # 610
    1584, 1944, 674, 99, 2352, 1019, 1763, 185, 554, 1066,  # 620
    2508, 951, 2822, 415, 297, 1914, 2619, 1338, 2505, 955,  # 630
    2786, 238, 3000, 2763, 299, 822, 1288, 3101, 2894, 992,  # 640
    489, 2157, 2309, 1576, 1810, 2964, 2662, 2087, 1569, 503,  # 650
    1505, 1468, 1613, 1138, 1256, 2715, 2846, 477, 2576, 108,  # 660
    2245, 1162, 2149, 2183, 858, 1324, 1055, 1741, 149, 615,  # 670
    825, 2143, 304, 283, 2322, 3017, 2510, 1960, 265, 2282,  # 680
    2184, 1461, 3113, 2372, 2166, 232, 693, 1945, 3039, 2494,  # 690
    1908, 2827, 280, 2950, 1044, 288, 2863, 1342, 2409, 1258,  # 700
    2249, 2862, 920, 1607, 2802, 610, 3129, 1108, 2823, 476,  # 710
    2641, 2788, 2070, 1368, 2903, 699, 2844, 942, 2663, 457,  # 720
    2701, 2540, 2231, 2746, 1738, 2350, 2808, 2025, 2541, 2156,  # 730
    126, 2512, 831, 2503, 2039, 2774, 886, 919, 2240, 2636,  # 740
    963, 1218, 1406, 1420, 526, 2639, 975, 1921, 2305, 1193,  # 750
    2517, 2809, 1647, 314, 2560, 545, 1345, 775, 603, 1163,  # 760
    1641, 1678, 2450, 2915, 42, 2242, 2741, 1143, 862, 1654,  # 770
    1826, 1689, 3124, 2710, 152, 549, 360, 1982, 1478, 2203,  # 780
    2612, 2956, 2681, 437, 2171, 1933, 3110, 1824, 2803, 234,  # 790
    764, 177, 817, 3145, 1262, 864, 2359, 2992, 1725, 2667,  # 800
    2484, 1133, 1667, 2847, 932, 1392, 2573, 2140, 1046, 264,  # 810
    2927, 2752, 679, 2493, 1658, 2466, 1057, 2444, 2093, 2248,  # 820
    2432, 726, 816, 1171, 2766, 2900, 2313, 488, 2265, 2043,  # 830
    332, 1771, 2320, 2646, 1089, 2826, 3148,  # 840
]
assert len(CLASS_VALUES) == 847 and len(set(CLASS_VALUES)) == 847


def lookup_table() -> np.ndarray:
    """_seg.png class value (0..65535) -> class index of ade847.json (65535 for the others)."""
    table = np.full(65536, IGNORE, dtype=np.uint16)
    table[CLASS_VALUES] = np.arange(len(CLASS_VALUES))
    return table


def class_values(seg_png: Path) -> np.ndarray:
    """The per-pixel class value encoded in an ADE20K _seg.png: R // 10 * 256 + G."""
    with Image.open(seg_png) as seg:
        rgb = np.array(seg.convert("RGB"), dtype=np.int64)
    return rgb[..., 0] // 10 * 256 + rgb[..., 1]


def resized_size(height: int, width: int) -> Tuple[int, int]:
    """(height, width) with the short side at most MAX_SHORT_SIDE, the aspect ratio kept."""
    short = min(height, width)
    if short <= MAX_SHORT_SIDE:
        return height, width
    if height <= width:
        return MAX_SHORT_SIDE, round(width / height * MAX_SHORT_SIDE)
    return round(height / width * MAX_SHORT_SIDE), MAX_SHORT_SIDE


def convert(item: Tuple[Path, Path, Path, Path], table: np.ndarray, quality: int) -> None:
    image_file, seg_file, image_target, label_target = item
    with Image.open(image_file) as image:
        image = np.array(image.convert("RGB"))
    label = table[class_values(seg_file)]
    if label.shape != image.shape[:2]:
        raise ValueError(f"{seg_file} is not the size of {image_file}")
    height, width = resized_size(*label.shape)
    if (height, width) != label.shape:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    image_target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(image_target, quality=quality)
    save_label(label, label_target)


def image_path(root: Path, folder: str, filename: str) -> Path:
    """An index entry's image file. Folders start with the dataset's folder name
    ("ADE20K_2021_17_01/images/ADE/..."); they are resolved from "images" on, under root."""
    parts = Path(folder).parts
    relative = Path(*parts[parts.index("images"):]) if "images" in parts else Path(folder)
    return root / relative / filename


def load_index(path: Path) -> Dict:
    with open(path, "rb") as f:
        index = pickle.load(f)
    for key in ("filename", "folder"):
        if key not in index:
            raise SystemExit(
                f"error: {path} has no '{key}' entry; is it ADE20K's index_ade20k.pkl?"
            )
    return index


def main(argv: Optional[List[str]] = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--root", type=Path, default=datasets_root() / "ADE20K_2021_17_01",
        help="the ADE20K_2021_17_01 folder (default: $DETECTRON2_DATASETS/ADE20K_2021_17_01)",
    )
    parser.add_argument(
        "--jpeg-quality", type=int, default=75,
        help="quality of the written images (default: 75, Pillow's default, as CAT-Seg wrote them)",
    )
    args = parser.parse_args(argv)

    index = load_index(require(
        args.root / "index_ade20k.pkl", "ADE20K index",
        "Unzip ADE20K_2021_17_01.zip into $DETECTRON2_DATASETS (see datasets/README.md).",
    ))
    items = []
    for folder, filename in zip(index["folder"], index["filename"]):
        if not filename.startswith("ADE_val_"):
            continue
        image_file = require(image_path(args.root, folder, filename), "ADE20K image")
        stem = Path(filename).stem
        seg_file = require(image_file.with_name(f"{stem}_seg.png"), "ADE20K _seg.png")
        items.append((
            image_file,
            seg_file,
            args.root / "images_detectron2" / "validation" / f"{stem}.jpg",
            args.root / "annotations_detectron2" / "validation" / f"{stem}.tif",
        ))
    if not items:
        raise SystemExit("error: the index lists no validation images (ADE_val_*.jpg)")
    convert_one = functools.partial(convert, table=lookup_table(), quality=args.jpeg_quality)
    run(convert_one, items, args.workers, "ade20k-847 validation")
    print(f"wrote {len(items)} images and labels under {args.root}")


if __name__ == "__main__":
    main()
