"""Class-description sets: bundled files, validation messages, aliases and round trips."""

import copy
import json

import pytest

from medot.data.descriptions import (
    BUNDLED_DIR,
    DescriptionError,
    DescriptionSet,
    bundled_description_sets,
    load_descriptions,
    normalize_name,
    save_descriptions,
)
from medot.data.synthetic import HIGH_END, LESION_CLASSES, LOW_END
from medot.errors import MedotError

MIN_SENTENCES = 20

EXPECTED = {
    "synthetic": ((HIGH_END, LOW_END), LESION_CLASSES),
    "breast": (("mammography", "ultrasound"), ("benign", "malignant", "normal")),
    "chest": (("ct", "xray"), ("covid19", "normal", "pneumonia")),
    "skin_derm7pt": (
        ("dermoscopy", "clinical"),
        ("basal_cell_carcinoma", "melanoma", "miscellaneous", "nevus", "seborrheic_keratosis"),
    ),
    "skin_midas": (
        ("dermoscopy", "clinical"),
        (
            "actinic_keratosis",
            "basal_cell_carcinoma",
            "melanocytic_nevus",
            "melanoma",
            "seborrheic_keratosis",
            "squamous_cell_carcinoma",
        ),
    ),
}

# Folder / label names used by the public datasets, and the class each must resolve to.
DATASET_NAMES = {
    "synthetic": {"good": "normal", "nodule": "nodule", "opacity": "opacity"},
    "breast": {"B": "benign", "M": "malignant", "NORM": "normal", "Normal": "normal"},
    "chest": {
        "NCP": "covid19",
        "CP": "pneumonia",
        "Normal": "normal",
        "COVID": "covid19",
        "COVID-19": "covid19",
        "Viral Pneumonia": "pneumonia",
        "Non-COVID": "pneumonia",
    },
    "skin_derm7pt": {
        "BCC": "basal_cell_carcinoma",
        "NEV": "nevus",
        "MEL": "melanoma",
        "DF/LT/MLS/MISC": "miscellaneous",
        "SK": "seborrheic_keratosis",
    },
    "skin_midas": {
        "malignant- ak": "actinic_keratosis",
        "malignant- bcc": "basal_cell_carcinoma",
        "benign-melanocytic nevus": "melanocytic_nevus",
        "malignant- melanoma": "melanoma",
        "benign-seborrheic keratosis": "seborrheic_keratosis",
        "malignant- sccis": "squamous_cell_carcinoma",
    },
}


def test_every_bundled_file_is_listed():
    assert set(bundled_description_sets()) == set(EXPECTED)
    assert {path.stem for path in BUNDLED_DIR.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_set_has_expected_modalities_and_classes(name):
    descriptions = load_descriptions(name)
    modalities, classes = EXPECTED[name]
    assert descriptions.task == name
    assert descriptions.modalities == modalities
    assert descriptions.classes == classes
    # sorted, so class folders named after the classes get labels in this order
    assert list(descriptions.classes) == sorted(descriptions.classes)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_set_has_enough_distinct_short_sentences(name):
    descriptions = load_descriptions(name)
    for modality in descriptions.modalities:
        for cls in descriptions.classes:
            sentences = descriptions.sentences(modality, cls)
            distinct = {" ".join(s.casefold().split()) for s in sentences}
            assert len(distinct) >= MIN_SENTENCES, (name, modality, cls, len(distinct))
            assert all(5 <= len(s.split()) <= 30 for s in sentences), (name, modality, cls)


@pytest.mark.parametrize("name", sorted(DATASET_NAMES))
def test_dataset_folder_names_resolve(name):
    descriptions = load_descriptions(name)
    for folder, cls in DATASET_NAMES[name].items():
        assert descriptions.resolve_class(folder) == cls
        assert descriptions.sentences(descriptions.low, folder) == descriptions.sentences(descriptions.low, cls)


def test_loading_a_bundled_file_by_path_equals_loading_by_name():
    assert load_descriptions(BUNDLED_DIR / "chest.json") == load_descriptions("chest")


def test_descriptions_differ_between_modalities():
    chest = load_descriptions("chest")
    assert set(chest.sentences("ct", "covid19")).isdisjoint(chest.sentences("xray", "covid19"))


# ------------------------------------------------------------------- user files


def _valid() -> dict:
    return {
        "task": "toy",
        "modalities": {"high": "mri", "low": "us"},
        "classes": ["cyst", "solid_mass"],
        "aliases": {"solid_mass": ["mass", "SM"]},
        "notes": "hand-made for the tests",
        "descriptions": {
            "mri": {"cyst": ["A bright round fluid sac on T2."], "solid_mass": ["An enhancing solid lump."]},
            "us": {
                "cyst": ["An anechoic sac with posterior enhancement."],
                "solid_mass": ["A hypoechoic solid nodule."],
            },
        },
    }


def _write(tmp_path, data, name="user.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def test_user_file_round_trip(tmp_path):
    path = _write(tmp_path, _valid())
    loaded = load_descriptions(path)
    assert loaded.to_dict() == _valid()
    assert loaded.origin == str(path)
    copy_path = save_descriptions(loaded, tmp_path / "nested" / "copy.json")
    again = load_descriptions(str(copy_path))
    assert again == loaded
    assert json.loads(copy_path.read_text(encoding="utf-8")) == _valid()


def test_bundled_set_round_trips_through_save(tmp_path):
    midas = load_descriptions("skin_midas")
    assert load_descriptions(save_descriptions(midas, tmp_path / "midas.json")) == midas


def test_aliases_resolve_regardless_of_case_and_separators(tmp_path):
    toy = load_descriptions(_write(tmp_path, _valid()))
    for name in ("solid_mass", "Solid Mass", "solid-mass", "MASS", "sm", " SM "):
        assert toy.resolve_class(name) == "solid_mass"
    assert toy.sentences("us", "Mass") == ["A hypoechoic solid nodule."]
    assert normalize_name("Viral_Pneumonia") == normalize_name("viral  pneumonia") == "viral pneumonia"


def test_sentences_returns_a_copy(tmp_path):
    toy = load_descriptions(_write(tmp_path, _valid()))
    toy.sentences("mri", "cyst").append("tampered")
    assert toy.sentences("mri", "cyst") == ["A bright round fluid sac on T2."]


def test_unknown_class_and_modality_are_explained(tmp_path):
    toy = load_descriptions(_write(tmp_path, _valid()))
    with pytest.raises(DescriptionError, match=r"no class or alias 'lipoma'.*cyst; solid_mass, mass, SM"):
        toy.resolve_class("lipoma")
    with pytest.raises(DescriptionError, match=r"no modality 'ct'; use 'mri' \(high-end\) or 'us' \(low-end\)"):
        toy.sentences("ct", "cyst")


def test_classes_for_labels_follows_the_dataset_order():
    chest = load_descriptions("chest")
    # CC-CCII's sorted folder names
    assert chest.classes_for_labels(["CP", "NCP", "Normal"]) == ("pneumonia", "covid19", "normal")
    with pytest.raises(DescriptionError, match=r"'NCP', 'COVID' all resolve to class 'covid19'"):
        chest.classes_for_labels(["NCP", "COVID", "Normal"])


def test_description_error_is_a_medot_error():
    assert issubclass(DescriptionError, MedotError)


def _mutate(edit):
    data = _valid()
    edit(data)
    return data


MALFORMED = {
    "not_json": ('{"task": "toy", "classes": [', r"is not valid JSON: .* line 1, column"),
    "duplicate_json_key": (
        '{"task": "a", "task": "b"}',
        r"key 'task' appears twice in the same JSON object",
    ),
    "top_level_list": ([1, 2], r"the top level must be a JSON object, got list"),
    "missing_key": (_mutate(lambda d: d.pop("classes")), r"missing required key\(s\) 'classes'"),
    "unknown_key": (_mutate(lambda d: d.update(alias={})), r"unknown key\(s\) 'alias'; allowed keys are"),
    "blank_task": (_mutate(lambda d: d.update(task="  ")), r"'task' must be a non-empty string"),
    "modality_roles": (
        _mutate(lambda d: d.update(modalities={"high": "mri", "target": "us"})),
        r"'modalities' must have exactly the keys 'high', 'low': missing 'low'; unexpected 'target'",
    ),
    "same_modality": (
        _mutate(lambda d: d.update(modalities={"high": "mri", "low": "mri"})),
        r"names 'mri' as both high-end and low-end",
    ),
    "one_class": (_mutate(lambda d: d.update(classes=["cyst"])), r"lists 1 class\(es\); .* at least two"),
    "duplicate_class": (
        _mutate(lambda d: d.update(classes=["cyst", "solid_mass", "Cyst"])),
        r"'Cyst' \(class 'Cyst'\) and 'cyst' \(class 'cyst'\) are the same name",
    ),
    "alias_collision": (
        _mutate(lambda d: d["aliases"].update(cyst=["Solid-Mass"])),
        r"'solid_mass' \(class 'solid_mass'\) and 'Solid-Mass' \(class 'cyst'\) are the same name",
    ),
    "alias_for_unknown_class": (
        _mutate(lambda d: d["aliases"].update(lipoma=["fatty"])),
        r"'aliases' names 'lipoma', not in 'classes'",
    ),
    "modality_section_mismatch": (
        _mutate(lambda d: d["descriptions"].update(ct=d["descriptions"].pop("us"))),
        r"'descriptions' \(one entry per modality\) must have exactly the keys 'mri', 'us': "
        r"missing 'us'; unexpected 'ct'",
    ),
    "class_missing_in_modality": (
        _mutate(lambda d: d["descriptions"]["us"].pop("cyst")),
        r"'descriptions.us' \(one entry per class\) .* missing 'cyst'",
    ),
    "extra_class_in_modality": (
        _mutate(lambda d: d["descriptions"]["mri"].update(lipoma=["Fat signal."])),
        r"'descriptions.mri' \(one entry per class\) .* unexpected 'lipoma'",
    ),
    "class_without_sentences": (
        _mutate(lambda d: d["descriptions"]["us"].update(cyst=[])),
        r"'descriptions.us.cyst' has no sentences",
    ),
    "sentences_not_a_list": (
        _mutate(lambda d: d["descriptions"]["us"].update(cyst="An anechoic sac.")),
        r"'descriptions.us.cyst' must be a list of strings, got str",
    ),
    "non_string_sentence": (
        _mutate(lambda d: d["descriptions"]["mri"]["cyst"].append(42)),
        r"item 2 of 'descriptions.mri.cyst' is a int \(42\); expected a string",
    ),
    "blank_sentence": (
        _mutate(lambda d: d["descriptions"]["mri"]["cyst"].append("   ")),
        r"item 2 of 'descriptions.mri.cyst' is blank",
    ),
    "duplicate_sentence": (
        _mutate(lambda d: d["descriptions"]["mri"]["cyst"].append("a bright  ROUND fluid sac on T2.")),
        r"in modality 'mri', the sentence .* appears twice in the same class",
    ),
    "sentence_in_two_classes": (
        _mutate(lambda d: d["descriptions"]["us"]["solid_mass"].append("An anechoic sac with posterior enhancement.")),
        r"in modality 'us', the sentence .* appears in classes 'cyst' and 'solid_mass'",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_names_the_file_and_the_problem(tmp_path, case):
    content, message = MALFORMED[case]
    path = _write(tmp_path, copy.deepcopy(content))
    with pytest.raises(DescriptionError, match=message) as caught:
        load_descriptions(path)
    assert f"description file {path}" in str(caught.value)


def test_undecodable_file_is_reported(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"task": "caf\xe9"}')
    with pytest.raises(DescriptionError, match=rf"description file {path} cannot be read as UTF-8 text"):
        load_descriptions(path)


def test_missing_file_or_unknown_name_lists_the_bundled_sets(tmp_path):
    with pytest.raises(DescriptionError, match=r"no bundled description set named 'lungs'; bundled sets: breast, "):
        load_descriptions("lungs")
    with pytest.raises(DescriptionError, match=rf"no description file at {tmp_path / 'absent.json'}"):
        load_descriptions(tmp_path / "absent.json")


def test_from_dict_checks_like_the_loader():
    bad = _valid()
    bad["descriptions"]["us"]["cyst"] = []
    with pytest.raises(DescriptionError, match=r"description file <memory>: 'descriptions.us.cyst' has no sentences"):
        DescriptionSet.from_dict(bad)
    assert DescriptionSet.from_dict(_valid()).to_dict() == _valid()
