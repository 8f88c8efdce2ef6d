"""nodes/bundled.py: the example photo goes into ComfyUI's input folder under the pack's name, never over anything."""
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bundled():
    # Loaded from its file: nodes/__init__.py imports ComfyUI, this module does not.
    spec = importlib.util.spec_from_file_location("p2pz_bundled", os.path.join(REPO, "nodes", "bundled.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_photo_is_copied_once(bundled, tmp_path):
    source = os.path.join(REPO, "assets", "cat.jpg")
    assert bundled.PHOTO_SOURCE == source and bundled.PHOTO_NAME == "pix2pix_zero_cat.jpg"
    assert bundled.install_example_photo(str(tmp_path)) == "copied"
    with open(source, "rb") as f:
        assert (tmp_path / bundled.PHOTO_NAME).read_bytes() == f.read()
    assert bundled.install_example_photo(str(tmp_path)) == "present"
    assert sorted(os.listdir(tmp_path)) == [bundled.PHOTO_NAME]  # no temporary file left


def test_a_users_file_of_that_name_is_kept(bundled, tmp_path, caplog):
    (tmp_path / bundled.PHOTO_NAME).write_bytes(b"the user's own picture")
    with caplog.at_level("INFO"):
        assert bundled.install_example_photo(str(tmp_path)) == "kept"
    assert (tmp_path / bundled.PHOTO_NAME).read_bytes() == b"the user's own picture"
    assert "left as it is" in caplog.text
    assert sorted(os.listdir(tmp_path)) == [bundled.PHOTO_NAME]


def test_an_unwritable_input_folder_does_not_stop_the_pack(bundled, tmp_path, caplog):
    blocker = tmp_path / "input"
    blocker.write_bytes(b"a file where the folder should be")
    assert bundled.install_example_photo(str(blocker)) == "skipped"
    assert "could not copy" in caplog.text


def test_the_bundled_direction_is_dog_minus_cat(bundled):
    from core.direction import load_direction

    d = load_direction(os.path.join(bundled.DIRECTIONS_DIR, "pix2pix_zero_cat_to_dog.safetensors"))
    assert (d.source, d.target, tuple(d.embedding.shape)) == ("cat", "dog", (1, 77, 768))
