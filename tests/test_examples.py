import numpy as np
from PIL import Image

from medot.data.examples import EXAMPLES_DIR, example_images, write_examples
from medot.data.io import read_image


def test_regenerating_examples_reproduces_the_shipped_pixels(tmp_path):
    written = write_examples(tmp_path)
    assert {p.name for p in written} == {p.name for p in EXAMPLES_DIR.glob("*.png")}
    for path in written:
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(EXAMPLES_DIR / path.name)))


def test_every_bundled_example_reads_as_a_valid_image():
    paths = example_images()
    assert any(p.suffix == ".dcm" for p in paths)
    for path in paths:
        image = read_image(path)
        assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
        assert image.pixels.std() > 0.01
