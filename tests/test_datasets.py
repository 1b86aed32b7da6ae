"""Dataset indexing: the synthetic layouts round-trip, split files parse, errors name what is missing."""

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medot.data.datasets import (
    ANOMALY_LABEL_NAMES,
    CLASS_FOLDERS,
    MVFA,
    MVTEC,
    ImageRecord,
    detect_layout,
    load_class_folder_dataset,
    load_mvfa,
    load_mvfa_fewshot,
    load_mvtec,
    mask_files,
)
from medot.data.sampling import sample_k_shot
from medot.data.synthetic import LESION_CLASSES, write_synthetic_benchmark
from medot.errors import DatasetLayoutError, MedotError
from medot.methods.pradot.data import read_mask


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets") / "bench"
    benchmark = write_synthetic_benchmark(root, seed=1, n_per_class=4, size=32, progress=False)
    return benchmark, json.loads(benchmark.manifest.read_text())["datasets"]


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_kmat_pair_round_trips_through_its_split_files(bench, split):
    benchmark, manifest = bench
    high = load_class_folder_dataset(benchmark.kmat_high, benchmark.kmat_high_split, split)
    low = load_class_folder_dataset(benchmark.kmat_low, benchmark.kmat_low_split, split)
    for index in (high, low):
        assert index.label_names == LESION_CLASSES
        assert index.counts() == manifest["kmat"]["counts"][split]
        assert all(r.path.is_file() and r.mask_path is None for r in index)
        assert all(index.label_names[r.label] == r.class_name == r.path.parent.name for r in index)
    # The two modalities show the same cases, file for file.
    high_names = [r.path.relative_to(benchmark.kmat_high) for r in high]
    assert high_names == [r.path.relative_to(benchmark.kmat_low) for r in low]


def test_class_folders_without_split_file_take_every_image_in_sorted_class_order(bench):
    benchmark, manifest = bench
    index = load_class_folder_dataset(benchmark.kmat_high)
    assert index.label_names == tuple(sorted(LESION_CLASSES))
    totals = {c: sum(manifest["kmat"]["counts"][s][c] for s in ("train", "val", "test")) for c in LESION_CLASSES}
    assert index.counts() == totals
    assert [r.label for r in index] == sorted(r.label for r in index)


@pytest.mark.parametrize("split", ["valid", "test"])
def test_mvfa_round_trips(bench, split):
    benchmark, manifest = bench
    index = load_mvfa(benchmark.mvfa_root, benchmark.mvfa_object, split)
    assert index.label_names == ANOMALY_LABEL_NAMES
    assert index.counts() == manifest["mvfa"]["counts"][split]
    for record in index:
        assert record.label == (record.class_name == "Ungood")
        if record.label:
            assert record.mask_path.is_file() and record.mask_path.name == record.path.name
            assert record.mask_path.parent.name == "anomaly_mask"
        else:
            assert record.mask_path is None


def test_mvfa_fewshot_lists_round_trip_and_nest(bench):
    benchmark, manifest = bench
    assert list(benchmark.mvfa_shots) == manifest["mvfa"]["shots"] and benchmark.mvfa_shots
    valid = set(load_mvfa(benchmark.mvfa_root, benchmark.mvfa_object, "valid"))
    previous = None
    for k in benchmark.mvfa_shots:
        shots = load_mvfa_fewshot(benchmark.mvfa_root, benchmark.mvfa_object, k)
        assert len(shots.normal) == len(shots.abnormal) == k
        assert {r.label for r in shots.normal} == {0} and {r.label for r in shots.abnormal} == {1}
        assert set(shots.normal) | set(shots.abnormal) <= valid
        if previous is not None:
            assert set(previous.normal) <= set(shots.normal) and set(previous.abnormal) <= set(shots.abnormal)
        previous = shots


@pytest.mark.parametrize("split", ["train", "test"])
def test_mvtec_round_trips(bench, split):
    benchmark, manifest = bench
    index = load_mvtec(benchmark.mvtec_root, benchmark.mvtec_category, split)
    assert index.counts() == manifest["mvtec"]["counts"][split]
    assert index[0].class_name == "good"
    for record in index:
        assert record.label == (record.class_name != "good")
        if record.label:
            assert record.mask_path == (
                benchmark.mvtec_root / benchmark.mvtec_category / "ground_truth" / record.class_name
                / f"{record.path.stem}_mask.png"
            )
            assert record.mask_path.is_file()


def _as_loco(mvtec_root: Path, copy: Path) -> Path:
    """Copy of the synthetic MVTec set with each ``<stem>_mask.png`` split into a LOCO folder
    ``<stem>/{000,001}.png``: the even rows of the mask at value 255, the odd rows at value 64."""
    shutil.copytree(mvtec_root, copy)
    for mask in sorted(copy.glob("*/ground_truth/*/*_mask.png")):
        pixels = np.asarray(Image.open(mask).convert("L")) > 127
        even, odd = pixels.copy(), pixels.copy()
        even[1::2] = odd[0::2] = False
        folder = mask.parent / mask.name[: -len("_mask.png")]
        folder.mkdir()
        Image.fromarray(even.astype(np.uint8) * 255).save(folder / "000.png")
        Image.fromarray(odd.astype(np.uint8) * 64).save(folder / "001.png")
        mask.unlink()
    return copy


def test_mvtec_loco_mask_folders_are_indexed_and_read_as_the_union(bench, tmp_path):
    benchmark, manifest = bench
    category = benchmark.mvtec_category
    loco = _as_loco(benchmark.mvtec_root, tmp_path / "loco")
    index = load_mvtec(loco, category, "test")
    assert index.counts() == manifest["mvtec"]["counts"]["test"]
    anomalous = [record for record in index if record.label]
    assert anomalous
    for record in anomalous:
        assert record.mask_path == loco / category / "ground_truth" / record.class_name / record.path.stem
        assert mask_files(record.mask_path) == (record.mask_path / "000.png", record.mask_path / "001.png")
        original = benchmark.mvtec_root / category / "ground_truth" / record.class_name / f"{record.path.stem}_mask.png"
        expected = read_mask(original)
        assert expected.any() and np.array_equal(read_mask(record.mask_path), expected)
    assert any(np.asarray(Image.open(record.mask_path / "001.png")).any() for record in anomalous)


def test_mvtec_loco_mask_folder_errors(bench, tmp_path):
    benchmark, _ = bench
    loco = _as_loco(benchmark.mvtec_root, tmp_path / "loco")
    folder = loco / benchmark.mvtec_category / "ground_truth" / "nodule" / "000"
    Image.new("L", (5, 7)).save(folder / "002.png")
    with pytest.raises(DatasetLayoutError, match=re.escape(f"the masks in {folder} differ in size")):
        read_mask(folder)
    for png in folder.iterdir():
        png.unlink()
    with pytest.raises(DatasetLayoutError, match=re.escape(f"mask folder {folder} holds no PNG")):
        read_mask(folder)
    image = loco / benchmark.mvtec_category / "test" / "nodule" / "000.png"
    expected = (
        f"missing mask {folder.parent / '000_mask.png'} for {image}: expected that file (MVTec AD) "
        f"or a folder {folder}"
    )
    with pytest.raises(DatasetLayoutError, match=re.escape(expected)):
        load_mvtec(loco, benchmark.mvtec_category, "test")


def test_detect_layout_names_each_written_layout(bench):
    benchmark, _ = bench
    mvfa = detect_layout(benchmark.mvfa_root)
    assert (mvfa.kind, mvfa.names) == (MVFA, benchmark.mvfa_objects) and benchmark.mvfa_object in mvfa.names
    mvtec = detect_layout(benchmark.mvtec_root)
    assert (mvtec.kind, mvtec.names) == (MVTEC, (benchmark.mvtec_category,))
    kmat = detect_layout(benchmark.kmat_low)
    assert (kmat.kind, kmat.names, kmat.split_files) == (CLASS_FOLDERS, LESION_CLASSES, (benchmark.kmat_low_split,))


def test_detect_layout_lists_the_three_layouts_when_none_fits(bench):
    benchmark, _ = bench
    with pytest.raises(DatasetLayoutError) as caught:
        detect_layout(benchmark.root)
    message = str(caught.value)
    assert str(benchmark.root) in message
    assert "class folders:" in message and "MVFA:" in message and "MVTec AD:" in message


# --------------------------------------------------------------------------- layout errors


def test_missing_mvfa_folders_are_named_with_their_full_path(bench, tmp_path):
    benchmark, _ = bench
    copy = tmp_path / "mvfa"
    shutil.copytree(benchmark.mvfa_root, copy)
    with pytest.raises(DatasetLayoutError, match="MVFA objects found in .*: \\['Histo', 'Phantom', 'Retina'\\]"):
        load_mvfa(copy, "Brain", "test")
    shutil.rmtree(copy / "Phantom_AD" / "test" / "Ungood" / "img")
    missing = copy / "Phantom_AD" / "test" / "Ungood" / "img"
    with pytest.raises(DatasetLayoutError, match=re.escape(f"missing folder {missing}: expected the Ungood images")):
        load_mvfa(copy, "Phantom", "test")
    mask = next((copy / "Phantom_AD" / "valid" / "Ungood" / "anomaly_mask").iterdir())
    mask.unlink()
    with pytest.raises(DatasetLayoutError, match=re.escape(f"missing mask {mask}")):
        load_mvfa(copy, "Phantom", "valid")


def test_missing_mvtec_parts_are_named(bench, tmp_path):
    benchmark, _ = bench
    copy = tmp_path / "mvtec"
    shutil.copytree(benchmark.mvtec_root, copy)
    expected = f"missing folder {copy / 'bottle'}: MVTec categories found in {copy}: ['phantom']"
    with pytest.raises(DatasetLayoutError, match=re.escape(expected)):
        load_mvtec(copy, "bottle", "test")
    mask = copy / "phantom" / "ground_truth" / "nodule" / "000_mask.png"
    mask.unlink()
    image = copy / "phantom" / "test" / "nodule" / "000.png"
    with pytest.raises(DatasetLayoutError, match=re.escape(f"missing mask {mask} for {image}")):
        load_mvtec(copy, "phantom", "test")
    with pytest.raises(DatasetLayoutError, match=re.escape(f"missing folder {copy / 'phantom' / 'validation'}")):
        load_mvtec(copy, "phantom", "validation")


def test_fewshot_list_errors(bench, tmp_path):
    benchmark, _ = bench
    copy = tmp_path / "mvfa"
    shutil.copytree(benchmark.mvfa_root, copy)
    list_file = copy / "fewshot_seed" / "Phantom" / "32-shot.txt"
    expected = f"missing few-shot list {list_file}; lists found: ['1-shot.txt', '2-shot.txt']"
    with pytest.raises(DatasetLayoutError, match=re.escape(expected)):
        load_mvfa_fewshot(copy, "Phantom", 32)
    one_shot = copy / "fewshot_seed" / "Phantom" / "1-shot.txt"
    one_shot.write_text("a-0: 00099.png\nn-0: 00000.png\n")
    with pytest.raises(DatasetLayoutError, match="do not exist: .*Ungood/img/00099.png"):
        load_mvfa_fewshot(copy, "Phantom", 1)
    one_shot.write_text("a-0: 00002.png 00003.png\nn-0: 00000.png\n")
    with pytest.raises(DatasetLayoutError, match="line 'a-0' names 2 images, expected 1"):
        load_mvfa_fewshot(copy, "Phantom", 1)
    with pytest.raises(DatasetLayoutError, match="no line 'a-3: <names>'"):
        load_mvfa_fewshot(copy, "Phantom", 1, iteration=3)


def test_class_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DatasetLayoutError, match=re.escape(f"missing folder {tmp_path / 'nowhere'}")):
        load_class_folder_dataset(tmp_path / "nowhere")
    _touch(tmp_path / "flat" / "notes.txt")
    with pytest.raises(DatasetLayoutError, match=re.escape(f"no class folders with images in {tmp_path / 'flat'}")):
        load_class_folder_dataset(tmp_path / "flat")
    with pytest.raises(DatasetLayoutError, match="split file .*absent.json does not exist"):
        load_class_folder_dataset(tmp_path / "flat", tmp_path / "absent.json")


# --------------------------------------------------------------------------- split files


@pytest.fixture
def two_classes(tmp_path):
    root = tmp_path / "derm"
    for name in ("benign/a.jpg", "benign/b.jpg", "malignant/c.JPG", "malignant/d.dcm", "malignant/.hidden.png"):
        _touch(root / name)
    _touch(root / "malignant" / "readme.txt")
    return root


def test_folder_index_keeps_image_extensions_only(two_classes):
    index = load_class_folder_dataset(two_classes)
    assert [(r.path.name, r.label, r.class_name) for r in index] == [
        ("a.jpg", 0, "benign"), ("b.jpg", 0, "benign"), ("c.JPG", 1, "malignant"), ("d.dcm", 1, "malignant")
    ]


def test_csv_split_with_and_without_split_column(two_classes):
    plain = two_classes / "test.csv"
    plain.write_text("path,label\nmalignant/d.dcm,1\nbenign/a.jpg,0\n")
    index = load_class_folder_dataset(two_classes, plain, split="ignored-without-a-split-column")
    assert [(r.path, r.label, r.class_name) for r in index] == [
        (two_classes / "malignant/d.dcm", 1, "malignant"), (two_classes / "benign/a.jpg", 0, "benign")
    ]
    named = two_classes / "splits.csv"
    named.write_text("path,label,class_name,split\nbenign/a.jpg,1,nevus,train\nmalignant/c.JPG,0,melanoma,test\n")
    train = load_class_folder_dataset(two_classes, named, split="train")
    assert train.label_names == ("melanoma", "nevus")
    assert [(r.path.name, r.label, r.class_name) for r in train] == [("a.jpg", 1, "nevus")]
    with pytest.raises(DatasetLayoutError, match="split 'val' in .*splits.csv is empty; it has \\['test', 'train'\\]"):
        load_class_folder_dataset(two_classes, named, split="val")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\nbenign/a.jpg,0\n", "has columns \\['file', 'label'\\]; expected at least 'path' and 'label'"),
        ("path,label\nbenign/a.jpg,benign\n", "line 2: label 'benign' is not a non-negative integer"),
        ("path,label\nbenign/a.jpg,5\n", "uses label\\(s\\) \\[2, 3, 4, 5\\] with no class name"),
        ("path,label\n../outside.jpg,0\n", "paths must be relative to .* and inside it"),
        ("path,label\nbenign/zzz.jpg,0\n", "lists 'benign/zzz.jpg', but .*benign/zzz.jpg does not exist"),
        ("path,label,class_name\nbenign/a.jpg,0,x\nbenign/b.jpg,0,y\n", "label 0 is called both 'x' and 'y'"),
    ],
)
def test_malformed_csv_split_files(two_classes, text, message):
    split_file = two_classes / "bad.csv"
    split_file.write_text(text)
    with pytest.raises(DatasetLayoutError, match=message):
        load_class_folder_dataset(two_classes, split_file)


def test_json_split_names_classes(two_classes):
    split_file = two_classes / "split_derm.json"
    split = {"train": [["malignant/c.JPG", 0, "melanoma"]], "val": [], "test": [["benign/b.jpg", 1, "nevus"]]}
    split_file.write_text(json.dumps(split))
    test = load_class_folder_dataset(two_classes, split_file, "test")
    assert test.label_names == ("melanoma", "nevus")
    assert list(test) == [ImageRecord(two_classes / "benign/b.jpg", 1, "nevus", None)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"train": [["benign/a.jpg", 0, "benign"]', "is not valid JSON"),
        ('[["benign/a.jpg", 0, "benign"]]', "must be an object of lists"),
        ('{"train": [["benign/a.jpg", "0", "benign"]]}', "entry 0 of 'train' is \\['benign/a.jpg', '0', 'benign'\\]"),
        ('{"train": [["benign/a.jpg", 0]]}', "expected \\[relative path, non-negative integer label, class name\\]"),
        ('{"test": [["benign/a.jpg", 0, "benign"]]}', "has no 'train' split; it has \\['test'\\]"),
        ('{"train": [], "test": [["benign/a.jpg", 0, "benign"]]}', "split 'train' in .* is empty"),
        ('{"train": [["benign/a.jpg", 1, "benign"]]}', "never names label\\(s\\) \\[0\\]"),
        ('{"train": [["/etc/passwd", 0, "benign"]]}', "paths must be relative to"),
    ],
)
def test_malformed_json_split_files(two_classes, text, message):
    split_file = two_classes / "bad.json"
    split_file.write_text(text)
    with pytest.raises(DatasetLayoutError, match=message):
        load_class_folder_dataset(two_classes, split_file, "train")


# --------------------------------------------------------------------------- k-shot sampling


def _records(per_class):
    return [
        ImageRecord(Path(f"/data/{name}/{i:03d}.png"), label, name)
        for label, (name, count) in enumerate(per_class.items())
        for i in range(count)
    ]


def test_k_shot_is_stratified_deterministic_and_order_free():
    records = _records({"normal": 12, "nodule": 7, "opacity": 9})
    sample = sample_k_shot(records, 4, seed=0)
    assert [r.class_name for r in sample] == ["normal"] * 4 + ["nodule"] * 4 + ["opacity"] * 4
    assert len(set(sample)) == 12 and set(sample) <= set(records)
    shuffled = records[:]
    random.Random(5).shuffle(shuffled)
    assert sample_k_shot(shuffled, 4, seed=0) == sample
    draws = {tuple(sample_k_shot(records, 4, seed=s)) for s in range(5)}
    assert len(draws) == 5


def test_k_shot_sets_nest_and_classes_draw_independently():
    records = _records({"normal": 12, "nodule": 7, "opacity": 9})
    for k in range(1, 7):
        assert set(sample_k_shot(records, k, seed=3)) <= set(sample_k_shot(records, k + 1, seed=3))
    without_opacity = [r for r in records if r.class_name != "opacity"]
    with_it = [r for r in sample_k_shot(records, 5, seed=3) if r.class_name != "opacity"]
    assert sample_k_shot(without_opacity, 5, seed=3) == with_it


def test_k_shot_errors_say_which_class_is_short():
    records = _records({"normal": 12, "nodule": 3, "opacity": 2})
    expected = "5-shot sampling needs 5 images per class, but class 'nodule' has 3, 'opacity' has 2"
    with pytest.raises(DatasetLayoutError, match=expected):
        sample_k_shot(records, 5, seed=0)
    with pytest.raises(MedotError, match="k must be a positive integer"):
        sample_k_shot(records, 0, seed=0)
    with pytest.raises(MedotError, match="non-negative integer seed"):
        sample_k_shot(records, 1, seed=-1)
    with pytest.raises(DatasetLayoutError, match="empty dataset"):
        sample_k_shot([], 1, seed=0)
