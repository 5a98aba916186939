"""name_seed keys every named random stream (simulated subjects, splits, pools, corruptions):
its values are pinned, since changing them changes every seeded result of the pipeline."""

import zlib

from genbrain.seeds import name_seed


def test_name_seed_is_crc32_of_the_utf8_text_and_pinned():
    pinned = {"S1": 2173770834, "population": 3024723976, "site-B": 3136262051,
              "dx-main-S1": 2218878462, "bwas-main-S2": 4061887011,
              "sub-001_T1w": 3430833179, "Ü": 1488406813}
    assert {k: name_seed(k) for k in pinned} == pinned
    assert all(name_seed(k) == zlib.crc32(k.encode()) for k in pinned)
    assert name_seed(42) == name_seed("42")  # ids read as numbers key like their text
