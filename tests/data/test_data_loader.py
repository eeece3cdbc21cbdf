"""Loader: batch layout, labels at document boundaries, disjoint ranks, exact resume."""

import numpy as np
import pytest
import torch

from train.data import DataConfig, DataError, build_dataloader, prepare_data
from train.data.boundaries import cu_seqlens_from_position_ids, doc_ids_from_position_ids


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, byte_tok):
    tmp = tmp_path_factory.mktemp("loader")
    cfg = DataConfig.from_dict(
        {
            "seq_len": 64,
            "cache_dir": str(tmp / "cache"),
            "validation_sequences": 5,
            "sources": [
                {
                    "type": "generated",
                    "generated": {"num_docs": 150, "min_words": 2, "max_words": 30},
                }
            ],
        }
    )
    return prepare_data(cfg, byte_tok, tmp / "out", verbose=False)


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def _same(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_batch_layout_and_labels(prepared):
    loader = build_dataloader(prepared, micro_batch_size=3, return_boundaries=True)
    rows = loader.indices()
    batch = next(loader)
    for key in ("input_ids", "position_ids", "labels"):
        assert batch[key].shape == (3, 64) and batch[key].dtype == torch.long
    for b, row in enumerate(rows):
        tokens, seg_lens, _ = prepared.row(int(row))
        starts = np.concatenate([[0], np.cumsum(seg_lens)])
        used = int(starts[-1])
        ids, pos, lab = (batch[k][b].numpy() for k in ("input_ids", "position_ids", "labels"))
        assert np.array_equal(ids[:used], tokens)
        assert (ids[used:] == prepared.pad_token_id).all()
        for s, n in zip(starts[:-1], seg_lens):
            assert np.array_equal(pos[s : s + n], np.arange(n))  # restart per document
            assert lab[s] == -100  # nothing predicted across a boundary
            assert np.array_equal(lab[s + 1 : s + n], ids[s + 1 : s + n])
        assert (lab[used:] == -100).all()
        assert np.array_equal(pos[used:], np.arange(64 - used))
        # Every document ends with EOS except pieces cut at the end of a row.
        assert (ids[starts[1:] - 1] == prepared.eos_token_id).sum() >= len(seg_lens) - 1
    doc_ids = doc_ids_from_position_ids(batch["position_ids"])
    assert torch.equal(batch["doc_ids"], doc_ids)
    cu, max_len = cu_seqlens_from_position_ids(batch["position_ids"])
    assert cu[0] == 0 and cu[-1] == 3 * 64 and cu.dtype == torch.int32
    assert int((cu[1:] - cu[:-1]).sum()) == 3 * 64 and max_len <= 64


def test_ranks_are_disjoint_and_cover_the_epoch(prepared):
    world, mb = 3, 2
    loaders = [
        build_dataloader(prepared, mb, rank=r, world_size=world, seed=5) for r in range(world)
    ]
    steps = len(loaders[0])
    train_rows = prepared.split_indices("train")
    assert steps == len(train_rows) // (world * mb)
    seen = []
    for _ in range(steps):
        for ld in loaders:
            seen.extend(ld.indices().tolist())
            next(ld)
    assert len(seen) == len(set(seen)) == steps * world * mb
    assert set(seen) <= set(train_rows.tolist())
    assert not set(seen) & set(prepared.split_indices("validation").tolist())
    # The next epoch reshuffles.
    nxt = loaders[0].indices().tolist()
    first = build_dataloader(prepared, mb, rank=0, world_size=world, seed=5).indices().tolist()
    assert nxt != first or len(train_rows) < 4


def test_same_seed_same_order_other_seed_other_order(prepared):
    a = _take(build_dataloader(prepared, 2, seed=1), 4)
    b = _take(build_dataloader(prepared, 2, seed=1), 4)
    c = _take(build_dataloader(prepared, 2, seed=2), 4)
    assert _same(a, b) and not _same(a, c)


@pytest.mark.parametrize("stop", [3, 0, "epoch"])
def test_resume_gives_the_same_batches(prepared, stop):
    ref = build_dataloader(prepared, 4, rank=1, world_size=2, seed=9)
    n = len(ref) + 3 if stop == "epoch" else stop  # "epoch": stop past an epoch boundary
    _take(ref, n)
    state = ref.state_dict()
    expected = _take(ref, len(ref) + 2)  # runs into the next epoch
    resumed = build_dataloader(prepared, 4, rank=1, world_size=2, seed=9)
    resumed.load_state_dict(state)
    assert _same(_take(resumed, len(expected)), expected)


def test_resume_with_another_world_size_continues_the_data(prepared):
    old = [build_dataloader(prepared, 2, rank=r, world_size=2, seed=0) for r in range(2)]
    for _ in range(3):
        for ld in old:
            next(ld)
    state = old[0].state_dict()
    assert state == old[1].state_dict()  # rank-independent
    new = build_dataloader(prepared, 4, rank=0, world_size=1, seed=0)
    new.load_state_dict(state)
    expected = [old[0].indices().tolist() + old[1].indices().tolist()]
    assert [new.indices().tolist()] == expected


def test_state_from_other_data_is_refused(prepared, tmp_path, byte_tok):
    loader = build_dataloader(prepared, 2)
    state = loader.state_dict()
    state["fingerprint"] = "0" * 16
    with pytest.raises(DataError, match="resuming would not see the same data"):
        build_dataloader(prepared, 2).load_state_dict(state)


def test_too_little_data_is_a_clear_error(prepared):
    with pytest.raises(DataError, match="fewer than micro_batch_size x world_size"):
        build_dataloader(prepared, 1000)


def test_config_form_opens_prepared_data(prepared, byte_tok):
    cfg = DataConfig.from_dict({**prepared.meta["config"], "prepared_dir": prepared.path})
    loader = build_dataloader(cfg, byte_tok, micro_batch_size=2, seed=3)
    assert loader.prepared.fingerprint == prepared.fingerprint
    assert _same(_take(loader, 2), _take(build_dataloader(prepared, 2, seed=3), 2))
