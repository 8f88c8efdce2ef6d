"""core/files.py: the one name check for users' file and folder names, and the atomic writer's file mode."""
import os

import pytest

from core.files import atomic_write, check_name


@pytest.mark.parametrize("name", ["...", ".", "..", ".hidden", "a/b", "a\\b", "../up", "", "   ", "cat dog",
                                  "x.", "_x", "-x", "a\nb", "a:b"])
def test_check_name_refuses_names_that_hide_escape_or_break(name):
    with pytest.raises(ValueError) as e:
        check_name(name, "direction name")
    assert "direction name" in str(e.value)
    assert "letters, digits, '_', '-' or '.'" in str(e.value)  # says which characters are allowed


@pytest.mark.parametrize("name, expected", [("cat_to_dog", "cat_to_dog"), (" cat-to-dog.v2 ", "cat-to-dog.v2"),
                                            ("chat_à_chien", "chat_à_chien"), ("2024", "2024")])
def test_check_name_accepts_plain_names(name, expected):
    assert check_name(name) == expected


def test_check_name_refuses_overlong_names():
    with pytest.raises(ValueError, match="too long"):
        check_name("a" * 201)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_the_mode_of_a_plain_write_under_the_umask(tmp_path, umask, mode):
    def private_writer(tmp):  # as safetensors' save_file does: a 0600 file whatever the umask
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"data")
        os.close(fd)

    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "f.bin", private_writer)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == mode
    assert open(path, "rb").read() == b"data" and os.listdir(tmp_path) == ["f.bin"]
