"""HPatches sequences (Balntas et al., CVPR 2017) in the ``hpatches-sequences-release``
layout: one folder per sequence, ``i_*`` (illumination, identity homographies) and
``v_*`` (viewpoint), each with ``1.ppm ... 6.ppm`` and ``H_1_2 ... H_1_6`` (plain-text
3x3 matrices mapping pixel (x, y) of image 1 to image k).

:func:`read_sequence` checks a folder and says which file is wrong; the D2-Net protocol
drops the 8 sequences with images above 1600 x 1200 (:data:`EXCLUDED_SEQUENCES`),
leaving 52 + 56 sequences and 540 pairs. :class:`HPatchesDataset` is the mmengine
dataset over the sequences (one item per sequence) for the usual test loop.
"""
import os
from dataclasses import dataclass, field
from typing import List, Sequence

import cv2
import numpy as np

#: the 8 high-resolution sequences D2-Net's HPatches protocol removes
EXCLUDED_SEQUENCES = ('i_contruction', 'i_crownnight', 'i_dc', 'i_pencils', 'i_whitebuilding',
                      'v_artisans', 'v_astronautis', 'v_talent')
NUM_IMAGES = 6
IMAGE_EXTENSIONS = ('.ppm', '.png', '.jpg')


@dataclass
class HPatchesSequence:
    """One sequence: ``kind`` ``'i'`` or ``'v'``, six image paths (reference first) and
    the five homographies ``H_1_k`` (k = 2..6), ``[5, 3, 3]``."""
    name: str
    kind: str
    image_paths: List[str]
    homographies: np.ndarray
    sizes: List[tuple] = field(default_factory=list)  # (height, width) per image

    def to_dict(self) -> dict:
        return dict(sequence=self.name, kind=self.kind, image_paths=list(self.image_paths),
                    homographies=self.homographies.copy(), sizes=list(self.sizes))


def read_homography(path: str) -> np.ndarray:
    """The 3x3 matrix in ``path``; a missing, malformed, non-finite or singular file
    is a clear error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'homography file {path} is missing')
    try:
        matrix = np.loadtxt(path, dtype=np.float64)
    except ValueError as err:
        raise ValueError(f'homography file {path} is not a 3x3 matrix of numbers: {err}') from None
    if matrix.shape != (3, 3):
        raise ValueError(f'homography file {path} holds shape {matrix.shape}, expected 3x3')
    if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < 1e-12:
        raise ValueError(f'homography file {path} is not an invertible finite matrix')
    return matrix


def image_size(path: str) -> tuple:
    """(height, width) of an image file (read fully: PPM has no cheap header reader)."""
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f'image {path} cannot be read')
    return image.shape[:2]


def load_image(path: str) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``. An image that cannot be decoded to its end (a truncated
    JPEG or PPM, which OpenCV fills with grey and only warns about) is a ValueError
    naming the file."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f'image {path} cannot be read')
    check_fully_decodable(path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def check_fully_decodable(path: str):
    """Decode ``path`` to its last pixel with Pillow, which refuses truncated data."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f'image {path} cannot be fully decoded (truncated or corrupt): '
                         f'{error}') from None


def project(points_xy: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """``[n, 2]`` (x, y) mapped by a 3x3 homography."""
    points = np.concatenate([points_xy, np.ones((len(points_xy), 1))], 1) @ homography.T
    return points[:, :2] / points[:, 2:3]


def _find_image(folder: str, index: int) -> str:
    for ext in IMAGE_EXTENSIONS:
        path = os.path.join(folder, f'{index}{ext}')
        if os.path.isfile(path):
            return path
    return None


def check_sizes(name: str, paths: Sequence[str], sizes: Sequence[tuple], kind: str,
                homographies: np.ndarray):
    """An image must fit its sequence: an illumination sequence is pixel-aligned (every
    image the reference's size); in a viewpoint sequence the reference's centre must
    map inside image k."""
    ref_h, ref_w = sizes[0]
    for k in range(1, NUM_IMAGES):
        height, width = sizes[k]
        if kind == 'i' and (height, width) != (ref_h, ref_w):
            raise ValueError(f'{paths[k]} is {height}x{width} but {name} is an illumination '
                             f'sequence of {ref_h}x{ref_w} images (identity homographies)')
        centre = project(np.array([[ref_w / 2, ref_h / 2]]), homographies[k - 1])[0]
        if not (0 <= centre[0] <= width and 0 <= centre[1] <= height):
            raise ValueError(f'{paths[k]} ({height}x{width}) does not fit {name}: H_1_{k + 1} '
                             f'maps the centre of 1 to {centre.round(1).tolist()}')


def read_sequence(folder: str, check_images: bool = True) -> HPatchesSequence:
    """Read and check one sequence folder."""
    name = os.path.basename(os.path.normpath(folder))
    if not (name.startswith('i_') or name.startswith('v_')):
        raise ValueError(f'{folder}: an HPatches sequence folder is named i_* or v_*')
    paths = [_find_image(folder, k) for k in range(1, NUM_IMAGES + 1)]
    missing = [f'{k}.ppm' for k, p in enumerate(paths, 1) if p is None]
    if missing:
        raise ValueError(f'{folder}: a sequence needs {NUM_IMAGES} images 1.ppm ... 6.ppm; '
                         f'missing {missing}')
    homographies = np.stack([read_homography(os.path.join(folder, f'H_1_{k}'))
                             for k in range(2, NUM_IMAGES + 1)])
    kind = name[0]
    sizes = []
    if check_images:
        sizes = [image_size(p) for p in paths]
        check_sizes(name, paths, sizes, kind, homographies)
    return HPatchesSequence(name, kind, paths, homographies, sizes)


def list_sequences(root: str, exclude=EXCLUDED_SEQUENCES, check_images: bool = True):
    """Every sequence under ``root`` (sorted by name), minus ``exclude``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f'HPatches root {root} does not exist (expected the '
                                'hpatches-sequences-release folder)')
    names = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n))
                   and n[:2] in ('i_', 'v_') and n not in set(exclude or ()))
    if not names:
        raise ValueError(f'{root} holds no i_* / v_* sequence folders')
    return [read_sequence(os.path.join(root, n), check_images) for n in names]


try:
    from mmengine.dataset import BaseDataset
    from mmengine.registry import DATASETS, FUNCTIONS
except ImportError:  # mmengine absent: the reader still works
    BaseDataset = None

if BaseDataset is not None:
    @FUNCTIONS.register_module()
    def hpatches_collate(batch):
        """The batch as a plain list of sequence dicts (mmengine's collates would
        transpose the image-path lists)."""
        return list(batch)

    @DATASETS.register_module()
    class HPatchesDataset(BaseDataset):
        """One item per sequence: ``sequence``, ``kind``, ``image_paths``,
        ``homographies`` ``[5, 3, 3]``. Images are read by the model
        (:class:`~mmdyn.models.keypoints.HPatchesFeatureModel`)."""
        METAINFO = dict(task='hpatches-sequences')

        def __init__(self, data_root: str, exclude: Sequence[str] = EXCLUDED_SEQUENCES,
                     check_images: bool = True, **kwargs):
            self.exclude, self.check_images = tuple(exclude or ()), check_images
            kwargs.setdefault('pipeline', [])
            kwargs.setdefault('serialize_data', False)
            super().__init__(data_root=data_root, **kwargs)

        def load_data_list(self):
            return [s.to_dict() for s in list_sequences(self.data_root, self.exclude,
                                                        self.check_images)]
