"""The toy model's procedural clips: seeded, moving, captioned as they move, any length and size."""

from __future__ import annotations

import numpy as np
import pytest

from radial_diffusers.toy.scenes import COLOURS, Scene, Sprite, caption, make_clip, random_scene, render


def _centre(frame: np.ndarray, colour: str) -> tuple[float, float]:
    """(row, column) centroid of the pixels within 30 of ``colour`` in RGB."""
    near = np.abs(frame.astype(np.int32) - np.asarray(COLOURS[colour])).max(-1) < 30
    assert near.sum() > 10, f"no {colour} shape found"
    rows, cols = np.nonzero(near)
    return rows.mean(), cols.mean()


def test_same_seed_same_clip_and_different_seeds_differ():
    a, ca = make_clip(7, frames=9, height=32, width=48)
    b, cb = make_clip(7, frames=9, height=32, width=48)
    assert a.shape == (9, 32, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and ca == cb
    captions = {make_clip(s, frames=2, height=16, width=16)[1] for s in range(40)}
    assert len(captions) > 20  # a varied set of descriptions


@pytest.mark.parametrize("motion,axis,sign", [("moving right", 1, 1), ("moving left", 1, -1),
                                              ("moving down", 0, 1), ("moving up", 0, -1)])
def test_the_shape_moves_the_way_the_caption_says(motion, axis, sign):
    sprite = Sprite("circle", "red", 0.5, 0.5, 0.12, vx=0.02 * sign * (axis == 1), vy=0.02 * sign * (axis == 0))
    scene = Scene((sprite,), motion, "dark", (60, 60, 60))
    video = render(scene, 9, 64, 64)
    start, end = _centre(video[0], "red"), _centre(video[8], "red")
    assert sign * (end[axis] - start[axis]) == pytest.approx(8 * 0.02 * 64, abs=1.0)  # 0.02 of 64 px per frame
    assert abs(end[1 - axis] - start[1 - axis]) < 0.5
    assert caption(scene) == f"a red circle {motion} on a dark background"


def test_bouncing_stays_inside_and_reflects_for_a_long_clip():
    sprite = Sprite("square", "yellow", 0.5, 0.5, 0.15, vx=0.05, vy=0.03)
    video = render(Scene((sprite,), "bouncing", "striped", (60, 60, 60)), 120, 48, 48)
    cols = np.array([_centre(f, "yellow")[1] for f in video])
    steps = np.diff(cols)
    assert (steps > 0).any() and (steps < 0).any()  # it turned around at a border
    assert cols.min() > 0.1 * 48 and cols.max() < 0.9 * 48


def test_colour_change_and_rotation_change_the_frames():
    fade = Scene((Sprite("circle", "blue", 0.5, 0.5, 0.2, colour_to="yellow"),), "changing colour", "dark", (9, 9, 9))
    video = render(fade, 30, 32, 32)
    assert _centre(video[0], "blue") and _centre(video[29], "yellow")
    assert caption(fade) == "a blue circle changing colour to yellow on a dark background"
    spin = Scene((Sprite("triangle", "white", 0.5, 0.5, 0.25, spin=0.3),), "rotating", "dark", (9, 9, 9))
    video = render(spin, 4, 32, 32)
    assert not np.array_equal(video[0], video[1])


def test_random_scenes_are_consistent():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = random_scene(rng)
        assert not (scene.motion == "rotating" and scene.sprites[0].shape == "circle")
        assert len(scene.sprites) == 1 or scene.motion == "bouncing"
        words = caption(scene).split()
        assert words[0] in ("a", "two") and scene.background in words


def test_coverage_marks_the_shapes_and_only_them():
    import dataclasses

    scene = Scene((Sprite("square", "red", 0.3, 0.4, 0.15, vx=0.03), Sprite("circle", "red", 0.7, 0.6, 0.12, vy=-0.02)),
                  "bouncing", "checkered", (70, 50, 90))
    video, cover = render(scene, 9, 48, 64, seed=3, coverage=True)
    assert cover.shape == (9, 48, 64) and cover.dtype == np.float32
    assert np.array_equal(video, render(scene, 9, 48, 64, seed=3))  # the same clip with or without coverage
    background = render(dataclasses.replace(scene, sprites=()), 9, 48, 64, seed=3)
    changed = (video != background).any(-1)
    assert cover.min() == 0.0 and cover.max() == 1.0
    assert not changed[cover == 0].any()  # no coverage: the background's pixels, untouched
    assert changed[cover == 1].all()  # full coverage: the shape's colour
    partial = (cover > 0) & (cover < 1)
    assert 0 < partial.sum() < 0.5 * (cover == 1).sum()  # a one-pixel anti-aliased edge


def test_bad_size_is_a_clear_error():
    scene = random_scene(np.random.default_rng(1))
    with pytest.raises(ValueError, match="height, width >= 8"):
        render(scene, 4, 4, 32)


def test_every_caption_word_is_in_the_toy_vocabulary_with_fixed_ids():
    from radial_diffusers.toy.vocab import TOY_SPECIALS, TOY_WORDS, toy_tokenizer

    tok = toy_tokenizer()
    unk = tok.convert_tokens_to_ids("<unk>")
    rng = np.random.default_rng(5)
    for _ in range(300):
        ids = tok(caption(random_scene(rng))).input_ids
        assert unk not in ids and ids[-1] == tok.eos_token_id
    # ids must not move once weights are trained on them: the first words keep their places
    assert TOY_SPECIALS == ("<pad>", "</s>", "<unk>") and TOY_WORDS[:5] == ("a", "two", "on", "background", "to")
    assert len(set(TOY_WORDS)) == len(TOY_WORDS)
    assert tok("a red circle").input_ids == [3, 3 + TOY_WORDS.index("red"), 3 + TOY_WORDS.index("circle"), 1]
