"""Edits that would change nothing are refused before any work: a zero direction (cat -> cat), a multiplier of 0,
the same word twice on the command line."""
import argparse
import os
import sys

import pytest
import torch

from core.direction import EditDirection, check_edit, direction_from_word_embeddings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import edit_image  # noqa: E402  (standard library only at import)


def test_zero_direction_is_refused_naming_the_words():
    same = EditDirection(embedding=torch.zeros(1, 77, 8), source="cat", target="cat")
    with pytest.raises(ValueError, match=r"'cat -> cat' is all zeros: its source and target are the same \('cat'\)"
                                         r".*Build Edit Direction's source and target"):
        check_edit(same)
    pooled = EditDirection(embedding=torch.zeros(1, 77, 8), pooled=torch.zeros(1, 4), source="Cat", target="cat")
    with pytest.raises(ValueError, match="all zeros"):
        check_edit(pooled)
    files = direction_from_word_embeddings(torch.ones(1, 77, 8), torch.ones(1, 77, 8), "cat", "cat")
    with pytest.raises(ValueError, match="all zeros"):
        check_edit(files)


def test_any_nonzero_value_or_pooled_vector_is_an_edit():
    embedding = torch.zeros(1, 77, 8)
    embedding[0, 5, 3] = 1e-30
    check_edit(EditDirection(embedding=embedding, source="cat", target="dog"))
    pooled = torch.zeros(1, 4)
    pooled[0, 1] = -2.0
    check_edit(EditDirection(embedding=torch.zeros(1, 77, 8), pooled=pooled, source="cat", target="dog"))


def test_multiplier_zero_is_refused_naming_the_widget():
    d = EditDirection(embedding=torch.ones(1, 77, 8), source="cat", target="dog")
    with pytest.raises(ValueError, match="direction_multiplier is 0: .*set direction_multiplier to 1"):
        check_edit(d, 0.0, "direction_multiplier")
    check_edit(d, -0.5, "direction_multiplier")  # negative reverses the edit: allowed


def _args(**overrides):
    args = dict(steps=50, sentences=1000, size=512, seed=0, source="cat", target="dog", output=None,
                image=os.path.join(REPO, "assets", "cat.jpg"), workflow=edit_image.DEFAULT_WORKFLOW, overwrite=False,
                checkpoint=edit_image.DEFAULT_CHECKPOINT, blip=None)
    args.update(overrides)
    return argparse.Namespace(**args)


@pytest.mark.parametrize("source, target", [("cat", "cat"), ("Cat", "cat "), ("tabby  cat", "tabby cat")])
def test_command_refuses_the_same_word_twice(source, target):
    with pytest.raises(edit_image.CommandError, match=r"are the same word: the edit direction would be all zeros"):
        edit_image.check_arguments(_args(source=source, target=target))


def test_command_accepts_different_words():
    edit_image.check_arguments(_args(source="cat", target="dog"))


def test_command_minimum_size_is_the_pack_minimum():
    from core.inversion import MIN_LATENT

    assert edit_image.MIN_SIZE == 8 * MIN_LATENT == 16
    edit_image.check_arguments(_args(size=16))
    with pytest.raises(edit_image.CommandError, match="--size 8: give a multiple of 8 from 16"):
        edit_image.check_arguments(_args(size=8))
