"""The synthetic benchmark: determinism, lesion masks, the CT / X-ray gap, and what is written."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medot.data.synthetic import (
    LESION_CLASSES,
    MANIFEST_NAME,
    NODULE,
    NORMAL,
    OPACITY,
    SyntheticBenchmarkError,
    render_case,
    render_ct_case,
    write_synthetic_benchmark,
)
from medot.errors import MedotError

SIZE = 64


def _tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("lesion", LESION_CLASSES)
def test_render_case_is_a_function_of_its_seed(lesion):
    first, again, other = (render_case(lesion, seed, SIZE) for seed in ((7, 0, 1), (7, 0, 1), (7, 0, 2)))
    for modality in ("ct", "xray", "mask"):
        np.testing.assert_array_equal(getattr(first, modality), getattr(again, modality))
    assert first.ct.shape == first.xray.shape == first.mask.shape == (SIZE, SIZE)
    assert first.ct.dtype == first.xray.dtype == np.uint8 and first.mask.dtype == bool
    assert not np.array_equal(first.ct, other.ct)
    assert not np.array_equal(first.xray, other.xray)
    ct_only, mask_only = render_ct_case(lesion, (7, 0, 1), SIZE)
    np.testing.assert_array_equal(ct_only, first.ct)
    np.testing.assert_array_equal(mask_only, first.mask)


@pytest.mark.parametrize("seed", range(4))
def test_masks_exactly_for_abnormal_cases_and_inside_the_head(seed):
    assert not render_case(NORMAL, seed, SIZE).mask.any()
    for lesion in (NODULE, OPACITY):
        case = render_case(lesion, seed, SIZE)
        head = ndimage.binary_fill_holes(case.ct > 0.15 * 255)
        assert case.mask.sum() >= 9
        assert (case.mask & ~head).sum() == 0
        assert not (case.mask[0].any() or case.mask[-1].any() or case.mask[:, 0].any() or case.mask[:, -1].any())


@pytest.mark.parametrize("seed", range(4))
def test_lesion_excess_lies_in_its_mask_and_a_nodule_fades_in_projection(seed):
    # The same seed draws the same anatomy, so lesion minus normal is the lesion plus noise.
    normal = render_case(NORMAL, seed, SIZE)
    contrast = {}
    for lesion in (NODULE, OPACITY):
        case = render_case(lesion, seed, SIZE)
        for modality in ("ct", "xray"):
            excess = getattr(case, modality).astype(float) - getattr(normal, modality)
            assert excess[case.mask].mean() > 5
            assert abs(excess[~case.mask].mean()) < 1.5
            contrast[lesion, modality] = excess[case.mask].mean()
    assert contrast[NODULE, "ct"] > 15
    # A nodule adds its diameter to a path through the whole head: less than half its slice contrast.
    assert contrast[NODULE, "xray"] < 0.5 * contrast[NODULE, "ct"]


def _histograms(images):
    return np.array([np.histogram(image, bins=32, range=(0, 256))[0] / image.size for image in images])


def test_classifier_fit_on_ct_degrades_on_xray():
    # Lesions sit at random places, so the features are translation-invariant intensity histograms.
    def cases(stream, per_class):
        rendered = [render_case(lesion, (0, stream, label, i), SIZE) for label, lesion in enumerate(LESION_CLASSES)
                    for i in range(per_class)]
        labels = np.repeat(np.arange(len(LESION_CLASSES)), per_class)
        return _histograms([c.ct for c in rendered]), _histograms([c.xray for c in rendered]), labels

    ct_train, _, y_train = cases(stream=0, per_class=30)
    ct_test, xray_test, y_test = cases(stream=1, per_class=20)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000)).fit(ct_train, y_train)
    ct_accuracy = classifier.score(ct_test, y_test)
    xray_accuracy = classifier.score(xray_test, y_test)
    assert ct_accuracy >= 0.65
    assert ct_accuracy - xray_accuracy >= 0.3


def test_render_case_rejects_unknown_lesion_and_tiny_size():
    with pytest.raises(SyntheticBenchmarkError, match="unknown lesion class 'tumour'"):
        render_case("tumour", 0, SIZE)
    with pytest.raises(SyntheticBenchmarkError, match="at least 32 pixels"):
        render_case(NORMAL, 0, 16)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "bench"
    return write_synthetic_benchmark(root, seed=3, n_per_class=3, size=48, progress=False)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(written, tmp_path):
    again = write_synthetic_benchmark(tmp_path / "again", seed=3, n_per_class=3, size=48, progress=False)
    other = write_synthetic_benchmark(tmp_path / "other", seed=4, n_per_class=3, size=48, progress=False)
    reference = _tree_bytes(written.root)
    assert _tree_bytes(again.root) == reference
    different = _tree_bytes(other.root)
    assert different.keys() == reference.keys()
    changed = [name for name in reference if name.endswith(".png") and different[name] != reference[name]]
    assert len(changed) == sum(name.endswith(".png") for name in reference)


def test_manifest_describes_what_is_on_disk(written):
    manifest = json.loads(written.manifest.read_text())
    assert manifest["seed"] == 3 and manifest["size"] == 48 and manifest["complete"] is True
    assert manifest["classes"] == list(LESION_CLASSES) == list(written.class_names)
    kmat = manifest["datasets"]["kmat"]
    for side in ("high_end", "low_end"):
        root = written.root / kmat[side]["root"]
        for lesion in LESION_CLASSES:
            on_disk = len(list((root / lesion).glob("*.png")))
            assert on_disk == sum(kmat["counts"][split][lesion] for split in ("train", "val", "test"))
    mvtec = manifest["datasets"]["mvtec"]
    category = written.mvtec_root / mvtec["category"]
    for split, groups in mvtec["counts"].items():
        for group, count in groups.items():
            assert len(list((category / split / group).glob("*.png"))) == count
    with Image.open(next((category / "train" / "good").glob("*.png"))) as image:
        assert image.mode == "L" and image.size == (48, 48)


def test_written_masks_are_binary_nonempty_and_match_their_images(written):
    counts = json.loads(written.manifest.read_text())["datasets"]
    abnormal = sum(
        split["Ungood"] for organ in counts["mvfa"]["objects"].values() for split in organ["counts"].values()
    )
    abnormal += sum(n for group, n in counts["mvtec"]["counts"]["test"].items() if group != "good")
    masks = sorted(written.root.rglob("anomaly_mask/*.png")) + sorted(written.root.rglob("ground_truth/*/*.png"))
    assert len(masks) == abnormal > 0
    for path in masks:
        mask = np.asarray(Image.open(path))
        assert mask.shape[:2] == (48, 48)
        assert set(np.unique(mask)) == {0, 255}


def test_rewrites_its_own_output_but_refuses_a_foreign_folder(written, tmp_path):
    before = _tree_bytes(written.root)
    write_synthetic_benchmark(written.root, seed=3, n_per_class=3, size=48, progress=False)
    assert _tree_bytes(written.root) == before

    foreign = tmp_path / "patients"
    foreign.mkdir()
    (foreign / "scan.dcm").write_bytes(b"not ours")
    expected = f"{foreign} is not empty and holds no synthetic-benchmark {MANIFEST_NAME}; refusing to write"
    with pytest.raises(SyntheticBenchmarkError, match=re.escape(expected)):
        write_synthetic_benchmark(foreign, n_per_class=3, size=48, progress=False)
    assert [p.name for p in foreign.iterdir()] == ["scan.dcm"]
    assert issubclass(SyntheticBenchmarkError, MedotError)


def test_progress_bar_can_be_switched_off(tmp_path, capsys):
    write_synthetic_benchmark(tmp_path / "quiet", n_per_class=3, size=32, progress=False)
    assert "synthetic benchmark" not in capsys.readouterr().err
    write_synthetic_benchmark(tmp_path / "loud", n_per_class=3, size=32, progress=True)
    assert "synthetic benchmark" in capsys.readouterr().err


def test_rejects_too_few_cases_per_class(tmp_path):
    with pytest.raises(SyntheticBenchmarkError, match="n_per_class=2 is too small"):
        write_synthetic_benchmark(tmp_path / "x", n_per_class=2, size=48, progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("obj", ["Retina", "Histo"])
def test_other_mvfa_organs_are_seeded_and_their_anomaly_lies_in_its_mask(obj):
    from medot.data.synthetic import MVFA_ORGANS, render_mvfa_case

    kind = MVFA_ORGANS[obj][1][0]
    image, mask = render_mvfa_case(obj, kind, (5, 1), SIZE)
    again, mask_again = render_mvfa_case(obj, kind, (5, 1), SIZE)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(mask, mask_again)
    normal, no_mask = render_mvfa_case(obj, NORMAL, (5, 1), SIZE)
    assert not no_mask.any() and mask.sum() >= 9
    grey = image.astype(float).reshape(SIZE, SIZE, -1).mean(-1)
    normal_grey = normal.astype(float).reshape(SIZE, SIZE, -1).mean(-1)
    # the same seed draws the same background: the anomaly changes the image inside its mask
    # far more than outside (fluid darkens the layers, atypia darkens the stroma with nuclei)
    inside = np.abs(grey - normal_grey)[mask].mean()
    outside = np.abs(grey - normal_grey)[~mask].mean()
    assert inside > 3 * outside and (grey[mask].mean() < normal_grey[mask].mean())


def test_unknown_organ_or_anomaly_is_refused():
    from medot.data.synthetic import render_mvfa_case

    with pytest.raises(SyntheticBenchmarkError, match="unknown synthetic MVFA object 'Lung'"):
        render_mvfa_case("Lung", NORMAL, 0, SIZE)
    with pytest.raises(SyntheticBenchmarkError, match="Retina has no anomaly 'nodule'"):
        render_mvfa_case("Retina", NODULE, 0, SIZE)


def test_mvfa_layout_holds_three_organs_with_fewshot_lists(written):
    from medot.data.datasets import detect_layout, load_mvfa, load_mvfa_fewshot

    manifest = json.loads(written.manifest.read_text())["datasets"]["mvfa"]
    assert detect_layout(written.mvfa_root).names == written.mvfa_objects == ("Histo", "Phantom", "Retina")
    assert {organ["modality"] for organ in manifest["objects"].values()} == {"ct", "oct", "histology"}
    for obj in written.mvfa_objects:
        test = load_mvfa(written.mvfa_root, obj, "test")
        assert test.counts() == manifest["objects"][obj]["counts"]["test"]
        assert all(record.mask_path is not None for record in test if record.label == 1)
        shots = load_mvfa_fewshot(written.mvfa_root, obj, written.mvfa_shots[-1])
        assert {r.path.parent.parent.parent.name for r in shots.normal + shots.abnormal} == {"valid"}
