"""medot.data.archive: a zipped dataset lands in the data root only when every check passes."""

import io
import stat
import zipfile
from pathlib import Path

import pytest

from medot.data.archive import import_dataset_zip
from medot.data.datasets import CLASS_FOLDERS, MVTEC
from medot.errors import DatasetLayoutError, PathNotAllowedError

PNG = (Path(__file__).resolve().parents[1] / "assets" / "examples" / "ct_normal.png").read_bytes()


def _zip(path: Path, members: dict[str, bytes], links: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, "/etc/passwd")
    return path


def _class_folders(prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{cls}/{i}.png": PNG for cls in ("benign", "malignant") for i in range(2)}


def test_class_folders_wrapped_in_one_top_folder_are_unwrapped(tmp_path):
    root = tmp_path / "data"
    folder, layout = import_dataset_zip(_zip(tmp_path / "busi.zip", _class_folders("busi/")), root)
    assert folder == root / "busi" and layout.kind == CLASS_FOLDERS
    assert set(layout.names) == {"benign", "malignant"}
    assert (folder / "benign" / "0.png").read_bytes() == PNG
    assert [p.name for p in root.iterdir()] == ["busi"]  # no staging folder left


def test_an_mvtec_category_under_a_chosen_name(tmp_path):
    members = {"bottle/train/good/0.png": PNG, "bottle/test/good/0.png": PNG, "bottle/test/crack/0.png": PNG}
    folder, layout = import_dataset_zip(_zip(tmp_path / "x.zip", members), tmp_path / "data", "my-mvtec")
    assert folder.name == "my-mvtec" and layout.kind == MVTEC and layout.names == ("bottle",)


@pytest.mark.parametrize(("members", "links", "error", "message"), [
    ({"../evil.png": PNG}, (), PathNotAllowedError, "points outside the archive"),
    ({"/abs/evil.png": PNG}, (), PathNotAllowedError, "points outside the archive"),
    ({**_class_folders(), "a/../../evil.png": PNG}, (), PathNotAllowedError, "points outside"),
    (_class_folders(), ("benign/link.png",), PathNotAllowedError, "symbolic link"),
    ({"notes/readme.txt": b"hello"}, (), DatasetLayoutError, "does not follow a known dataset layout"),
])
def test_refused_archives_leave_nothing_behind(tmp_path, members, links, error, message):
    root = tmp_path / "data"
    with pytest.raises(error, match=message):
        import_dataset_zip(_zip(tmp_path / "bad.zip", members, links), root)
    assert not root.exists() or list(root.iterdir()) == []


def test_size_file_count_name_and_format_limits(tmp_path):
    root = tmp_path / "data"
    archive = _zip(tmp_path / "ok.zip", _class_folders())
    with pytest.raises(DatasetLayoutError, match="more than the limit of 1,000 bytes"):
        import_dataset_zip(archive, root, max_bytes=1000)
    with pytest.raises(DatasetLayoutError, match="4 files is more than the limit of 3"):
        import_dataset_zip(archive, root, max_files=3)
    with pytest.raises(PathNotAllowedError, match="not a plain folder name"):
        import_dataset_zip(archive, root, name="../up")
    (tmp_path / "fake.zip").write_bytes(b"not a zip at all")
    with pytest.raises(DatasetLayoutError, match="not a zip archive"):
        import_dataset_zip(tmp_path / "fake.zip", root)
    import_dataset_zip(archive, root, name="first")
    with pytest.raises(DatasetLayoutError, match="already exists"):
        import_dataset_zip(archive, root, name="first")


def test_a_header_that_understates_the_size_is_caught_while_writing(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for name, data in _class_folders().items():
            bundle.writestr(name, data)
    raw = bytearray(buffer.getvalue())
    # shrink every central-directory "uncompressed size" field to 1 byte
    position = raw.find(b"PK\x01\x02")
    while position != -1:
        raw[position + 24:position + 28] = (1).to_bytes(4, "little")
        position = raw.find(b"PK\x01\x02", position + 4)
    (tmp_path / "liar.zip").write_bytes(bytes(raw))
    with pytest.raises(DatasetLayoutError):
        import_dataset_zip(tmp_path / "liar.zip", tmp_path / "data", max_bytes=len(PNG) + 10)
    assert list((tmp_path / "data").iterdir()) == []
