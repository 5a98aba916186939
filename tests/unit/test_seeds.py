"""The seeds of every random stream: name_seed keys named streams (simulated subjects, splits,
pools, corruptions), seed_of integer-keyed ones (the trainer, the clinical regressor). Their
values are pinned, since changing them changes every seeded result of the pipeline."""

import zlib

from genbrain.seeds import name_seed, seed_of


def test_name_seed_is_crc32_of_the_utf8_text_and_pinned():
    pinned = {"S1": 2173770834, "population": 3024723976, "site-B": 3136262051,
              "dx-main-S1": 2218878462, "bwas-main-S2": 4061887011,
              "sub-001_T1w": 3430833179, "Ü": 1488406813}
    assert {k: name_seed(k) for k in pinned} == pinned
    assert all(name_seed(k) == zlib.crc32(k.encode()) for k in pinned)
    assert name_seed(42) == name_seed("42")  # ids read as numbers key like their text


def test_seed_of_is_pinned_63_bit_and_keyed():
    pinned = {(0,): 7896617691693857887, (0, 1): 2918264622725855778,
              (7, 2, 5, 3): 7582744445662797316, (3, 14): 1117353933592787484,
              (123456, 11): 1730229325093601983}
    assert {k: seed_of(*k) for k in pinned} == pinned
    assert all(0 <= v < 2**63 for v in pinned.values())
