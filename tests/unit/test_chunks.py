import pandas as pd

from genbrain.chunks import assign_chunks, chunk_keys, chunk_rows


def test_chunks_are_formed_within_sites_and_stable_when_a_site_is_added():
    t = pd.DataFrame({"participant_id": [f"sub-{i}" for i in range(7)],
                      "site": ["a", "a", "a", "b", "a", "b", "a"]})
    c = assign_chunks(t, 2)
    assert c["chunk"].tolist() == [0, 0, 1, 0, 1, 0, 2]
    assert chunk_keys(t, 2) == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert chunk_rows(t, 2, "a", 1)["participant_id"].tolist() == ["sub-2", "sub-4"]
    grown = pd.concat([t, pd.DataFrame({"participant_id": ["sub-9"], "site": ["new"]})])
    before = assign_chunks(t, 2)
    after = assign_chunks(grown, 2).iloc[: len(t)]
    assert before["chunk"].tolist() == after["chunk"].tolist()
