"""Out-of-core training data: token shards (round trip, corruption), the streamed epoch order (reproducible,
rank sharding), streaming pretraining (runs, resumes) and shards built on a two-worker dask cluster."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tauml import pipeline
from tauml.config import GPTConfig, PretrainConfig
from tauml.data import shards as shard_format
from tauml.data.chunks import iter_jet_chunks
from tauml.data.features import JetArrays, jet_arrays
from tauml.data.readers import read_jetclass
from tauml.data.shards import ShardError, ShardReader, open_shard, shard_problem, write_shard
from tauml.models import vqvae
from tauml.training.pretrain_stream import pretrain_streaming, unigram_perplexity_stream
from tauml.training.streaming import EpochPlan, ShardBatches, split_parts, whole_parts


def _random_shard(folder: Path, n_jets: int, seed: int, vocab: int = 19, slots: int = 12):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, slots - 1, n_jets)
    tokens = np.zeros((n_jets, slots), np.int64)
    mask = np.arange(slots)[None, :] < (counts + 2)[:, None]
    tokens[:, 0] = vqvae.START_ID
    for i, n in enumerate(counts):
        tokens[i, 1:n + 1] = rng.integers(vqvae.CODE_OFFSET, vocab, n)
        tokens[i, n + 1] = vqvae.STOP_ID
    write_shard(folder, [(tokens[: n_jets // 2], mask[: n_jets // 2]), (tokens[n_jets // 2:], mask[n_jets // 2:])],
                vocab, slots)
    return tokens, mask


@pytest.fixture()
def random_shards(tmp_path):
    made = [_random_shard(tmp_path / f"s{i}", n, seed=i) for i, n in enumerate((37, 50, 23, 64))]
    return [open_shard(tmp_path / f"s{i}") for i in range(4)], made


def test_token_ids_of_the_shard_format_are_the_models():
    assert (shard_format.PAD, shard_format.START, shard_format.STOP) == (vqvae.PAD_ID, vqvae.START_ID, vqvae.STOP_ID)


def test_a_shard_gives_back_the_padded_tokens_it_was_written_from(random_shards):
    shards, made = random_shards
    for shard, (tokens, mask) in zip(shards, made):
        back_tokens, back_mask = shard.padded()
        assert np.array_equal(back_tokens, tokens) and np.array_equal(back_mask, mask)
        assert shard.tokens.dtype == np.uint16 and isinstance(shard.tokens, np.memmap)
        rows = np.array([5, 0, 3])
        batch_tokens, batch_mask = shard.batch(rows)  # padded to the longest of the batch only
        width = int(mask[rows].sum(1).max())
        assert np.array_equal(batch_tokens, tokens[rows, :width]) and np.array_equal(batch_mask, mask[rows, :width])
        read_tokens, read_mask = ShardReader(shard.folder).batch(rows)  # the same by positioned reads
        assert np.array_equal(read_tokens, batch_tokens) and read_tokens.dtype == np.int64
        assert np.array_equal(read_mask, batch_mask)


def test_a_truncated_or_altered_shard_is_refused_with_the_folder_to_delete(random_shards):
    shards, _ = random_shards
    folder = shards[0].folder
    data = (folder / "tokens.npy").read_bytes()
    (folder / "tokens.npy").write_bytes(data[:-10])
    assert "bytes" in shard_problem(folder)
    with pytest.raises(ShardError, match=f"Delete {folder}"):
        open_shard(folder)
    changed = bytearray(data)
    changed[-1] ^= 1  # same size, other content
    (folder / "tokens.npy").write_bytes(bytes(changed))
    assert "SHA-256" in shard_problem(folder)


def test_the_epoch_order_is_reproducible_and_changes_with_the_epoch(random_shards):
    shards, _ = random_shards
    train, _ = split_parts(shards, 0.2, seed=5)

    def order(epoch, window_jets=1_000_000):
        plan = EpochPlan(train, 16, seed=7, epoch=epoch, window_jets=window_jets)
        return np.concatenate([np.stack(plan.batch(b), 1) for b in range(len(plan))])

    assert np.array_equal(order(0), order(0))
    assert not np.array_equal(order(0), order(1))
    assert not np.array_equal(order(0, window_jets=40), order(1, window_jets=40))
    assert np.array_equal(order(2, window_jets=40), order(2, window_jets=40))


@pytest.mark.parametrize("window_jets", [1_000_000, 30])
def test_the_ranks_together_see_every_jet_of_an_epoch_exactly_once(random_shards, window_jets):
    shards, _ = random_shards
    train, val = split_parts(shards, 0.25, seed=3)
    expected = {(i, r) for i, part in enumerate(train) for r in part.rows()}
    assert not expected & {(i, r) for i, part in enumerate(val) for r in part.rows()}  # train and val disjoint
    assert len(expected) + sum(len(v) for v in val) == sum(len(s) for s in shards)
    seen, world = [], 3
    for rank in range(world):
        plan = EpochPlan(train, 10, seed=1, epoch=4, window_jets=window_jets)
        for b in range(len(plan)):
            ids, rows = plan.batch(b, rank, world)
            seen.extend(zip(ids.tolist(), rows.tolist()))
    assert len(seen) == len(expected) and set(seen) == expected


def test_a_streamed_batch_holds_the_jets_of_the_plan_padded_to_its_longest(random_shards):
    shards, made = random_shards
    parts = whole_parts(shards)
    plan = EpochPlan(parts, 8, seed=1, epoch=0)
    batch = ShardBatches(plan)[2]
    ids, rows = plan.batch(2)
    tokens = np.concatenate([made[i][0][[r]] for i, r in zip(ids, rows)])
    assert torch.equal(batch.tokens, torch.from_numpy(tokens[:, :batch.tokens.shape[1]]))
    assert int(batch.mask.sum(1).max()) == batch.tokens.shape[1]


def test_streaming_pretraining_resumes_to_the_weights_of_an_uninterrupted_run(random_shards, tmp_path):
    shards, made = random_shards
    train, val = split_parts(shards, 0.2, seed=1603)
    gpt = GPTConfig(n_layer=1, n_head=2, n_embd=16, ffn_dim=32, vocab_size=19, max_len=12)
    config = PretrainConfig(epochs=2, batch_size=16, warmup_steps=2, device="cpu", streaming=True)
    whole, history = pretrain_streaming(train, val, gpt, config, tmp_path / "a", progress=False)
    assert len(history["epochs"]) == 2 and history["streaming"] and np.isfinite(history["epochs"][-1]["val_loss"])
    assert history["epochs"][0]["train_jets"] == sum(len(p) for p in train)
    pretrain_streaming(train, val, gpt, config, tmp_path / "b", progress=False, max_epochs_this_call=1)
    resumed, again = pretrain_streaming(train, val, gpt, config, tmp_path / "b", progress=False)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [e["val_loss"] for e in again["epochs"]] == [e["val_loss"] for e in history["epochs"]]
    # the streamed unigram reference is the in-memory one
    from tauml.evaluation.generation import unigram_perplexity

    def stack(parts):
        tok = [made[shards.index(next(s for s in shards if s.folder == p.folder))][0][p.rows()] for p in parts]
        msk = [made[shards.index(next(s for s in shards if s.folder == p.folder))][1][p.rows()] for p in parts]
        return torch.from_numpy(np.concatenate(tok)), torch.from_numpy(np.concatenate(msk))

    expected = unigram_perplexity(*stack(train), *stack(val), 19)
    assert unigram_perplexity_stream(train, val, 19) == pytest.approx(expected, rel=1e-12)


def test_chunked_features_equal_the_whole_file(tiny_dataset):
    file = tiny_dataset.jetclass("TTBar")[0]
    whole = jet_arrays(read_jetclass(file), max_constituents=128)
    chunked = JetArrays.concatenate(list(iter_jet_chunks(file, 128, chunk_jets=7)))
    assert np.array_equal(chunked.features, whole.features) and np.array_equal(chunked.mask, whole.mask)
    assert chunked.features.dtype == np.float32


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_preset, tiny_dataset):
    return pipeline.tokenizer(tiny_preset, progress=False)


def test_file_shards_hold_the_tokens_of_the_in_memory_tokenization(tiny_preset, tiny_tokenizer, tiny_dataset):
    from tauml.pipeline.shards import token_shards

    files = [str(f) for f in tiny_dataset.jetclass("TTBar")[:2]]
    shards = token_shards(tiny_preset, files, progress=False, chunk_jets=16)
    for file, shard in zip(files, shards):
        jets = jet_arrays(read_jetclass(file), max_constituents=128)
        tokens, mask = tiny_tokenizer.tokenize(jets.features, jets.mask)
        back_tokens, back_mask = shard.padded()
        assert np.array_equal(back_tokens, tokens.numpy()) and np.array_equal(back_mask, mask.numpy())
    # a truncated shard is rebuilt from its file, the others are kept as they are
    kept = (shards[1].folder / "tokens.npy").stat().st_mtime_ns
    expected, folder = shards[0].padded()[0], shards[0].folder
    del shards  # (their memory maps must not read the file truncated below)
    data = (folder / "tokens.npy").read_bytes()
    (folder / "tokens.npy").write_bytes(data[: len(data) // 2])
    again = token_shards(tiny_preset, files, progress=False)
    assert again[0].folder == folder and np.array_equal(again[0].padded()[0], expected)
    assert (again[1].folder / "tokens.npy").stat().st_mtime_ns == kept


def test_pipeline_tokens_come_back_from_a_verified_shard(tiny_preset, tiny_tokenizer):
    jets = pipeline.tau_jets(tiny_preset, "dm", "train")
    first = pipeline.tokens(tiny_preset, jets, "dm/train")
    again = pipeline.tokens(tiny_preset, jets, "dm/train")  # read from the shard
    tokens, mask = tiny_tokenizer.tokenize(jets.features, jets.mask)
    for result in (first, again):
        assert result[0].dtype == np.int64 and np.array_equal(result[0], tokens.numpy())
        assert np.array_equal(result[1], mask.numpy())


def test_shards_built_on_a_two_worker_dask_cluster_equal_the_serial_ones(tiny_preset, tiny_tokenizer, tiny_dataset,
                                                                        tmp_path):
    pytest.importorskip("dask.distributed")
    from tauml.pipeline.shards import token_shards

    files = [str(f) for f in tiny_dataset.jetclass("ZJetsToNuNu")]
    copies = []
    for f in files:  # the same contents under other paths: other shards
        copies.append(str(tmp_path / Path(f).name))
        shutil.copy2(f, copies[-1])
    serial = token_shards(tiny_preset, files, progress=False)
    first = token_shards(tiny_preset, copies[:1], progress=False)  # done before: not built again
    before = (first[0].folder / "tokens.npy").stat().st_mtime_ns
    parallel = token_shards(tiny_preset, copies, progress=False, scheduler="local:2:threads")
    assert [s.folder for s in parallel] != [s.folder for s in serial]
    for a, b in zip(serial, parallel):
        assert np.array_equal(a.padded()[0], b.padded()[0])
    assert (parallel[0].folder / "tokens.npy").stat().st_mtime_ns == before


def test_the_pipeline_pretrains_by_streaming_when_asked(tiny_preset, tiny_tokenizer):
    streaming = replace(tiny_preset, pretrain=replace(tiny_preset.pretrain, streaming=True, device="cpu"))
    assert pipeline.backbone_key(streaming) != pipeline.backbone_key(tiny_preset)
    assert pipeline.backbone_key(replace(streaming, pretrain=replace(streaming.pretrain, streaming=False))) == \
        pipeline.backbone_key(replace(tiny_preset, pretrain=replace(tiny_preset.pretrain, device="cpu")))
    checkpoint = pipeline.backbone_checkpoint(streaming, progress=False)
    history = pipeline.backbone_history(streaming)
    assert checkpoint.is_file() and history["streaming"] and len(history["epochs"]) == streaming.pretrain.epochs
    assert history["n_train_jets"] + history["n_val_jets"] == len(pipeline.pp_jets(tiny_preset)[0])


def test_a_feature_shard_gives_back_the_padded_features_it_was_written_from(tiny_dataset, tmp_path):
    from tauml.data.shards import write_feature_shard

    file = tiny_dataset.jetclass("TTBar")[0]
    jets = jet_arrays(read_jetclass(file), max_constituents=128)
    chunks = [(c.features, c.mask) for c in iter_jet_chunks(file, 128, chunk_jets=9)]
    write_feature_shard(tmp_path / "f", chunks, 128)
    shard = open_shard(tmp_path / "f")
    assert len(shard) == len(jets) and shard.tokens.dtype == np.float32 and shard.vocab_size == 0
    features, mask = shard.padded()
    assert np.array_equal(features, jets.features) and np.array_equal(mask, jets.mask)
    rows = np.array([3, 0, 7])
    batch, batch_mask = shard.batch(rows)
    width = int(jets.mask[rows].sum(1).max())
    assert np.array_equal(batch, jets.features[rows, :width]) and np.array_equal(batch_mask, jets.mask[rows, :width])
    reader = ShardReader(tmp_path / "f")  # positioned reads give what the memory map gives
    for got, want in zip(reader.batch(rows, 128), shard.batch(rows, 128)):
        assert np.array_equal(got, want) and got.dtype == want.dtype
    reader.close()
    offsets = np.load(tmp_path / "f" / "offsets.npy")  # an altered offsets file is refused
    offsets[1] += 1
    np.save(tmp_path / "f" / "offsets.npy", offsets)
    assert "SHA-256" in shard_problem(tmp_path / "f")


def test_a_bucketed_plan_visits_every_full_batch_of_jets_once_with_similar_lengths(random_shards):
    shards, _ = random_shards
    parts = whole_parts(shards)
    plan = EpochPlan(parts, 8, seed=3, epoch=1, bucket_batches=4, drop_last=True)
    assert len(plan) == sum(len(s) for s in shards) // 8
    seen = [tuple(x) for b in range(len(plan)) for x in zip(*plan.batch(b))]
    assert len(seen) == len(set(seen)) == len(plan) * 8  # no jet twice; only the last partial batch left out
    with pytest.raises(IndexError):
        plan.batch(len(plan))
    spread = []
    for b in range(len(plan)):  # a batch holds jets of similar length: far less spread than a random batch
        ids, rows = plan.batch(b)
        lengths = np.array([shards[i].lengths(np.array([r]))[0] for i, r in zip(ids, rows)])
        spread.append(np.ptp(lengths))
    plain = EpochPlan(parts, 8, seed=3, epoch=1)
    plain_spread = [np.ptp([shards[i].lengths(np.array([r]))[0] for i, r in zip(*plain.batch(b))])
                    for b in range(len(plan))]
    assert np.mean(spread) < 0.5 * np.mean(plain_spread)
    assert [tuple(x) for b in range(len(plan)) for x in zip(*plan.batch(b))] == seen  # reproducible


def test_the_streamed_tokenizer_trains_validates_as_in_memory_and_resumes(tiny_preset, tiny_dataset, tmp_path):
    from tauml.pipeline.shards import feature_shards
    from tauml.training.streaming import iter_part_batches
    from tauml.training.tokenizer import evaluate, evaluate_batches, train_tokenizer_streaming

    files = [str(f) for f in tiny_dataset.jetclass("TTBar")]
    shards = feature_shards(files, tiny_preset.features, 128, progress=False, chunk_jets=16)
    train, val = split_parts(shards, 0.2, seed=5)
    config = replace(tiny_preset.tokenizer, epochs=2, streaming=True)
    whole = train_tokenizer_streaming(train, val, config, tiny_preset.features, tmp_path / "whole", progress=False,
                                      device="cpu")
    assert whole.metadata["n_train"] == sum(len(p) for p in train)
    assert not whole.training and not any(p.requires_grad for p in whole.parameters())
    # validation accumulated over streamed batches equals the in-memory evaluation of the same jets
    val_x = np.concatenate([shards[i].batch(p.rows(), 128)[0] for i, p in enumerate(val)])
    val_mask = np.concatenate([shards[i].batch(p.rows(), 128)[1] for i, p in enumerate(val)])
    streamed = evaluate_batches(whole, ((b.tokens, b.mask) for b in iter_part_batches(val, 7)))
    in_memory = evaluate(whole, val_x, val_mask)
    assert streamed["loss"] == pytest.approx(in_memory["loss"], rel=1e-5)
    assert streamed["perplexity"] == pytest.approx(in_memory["perplexity"], rel=1e-9)
    # interrupted after one epoch, resumed: the weights of the uninterrupted run
    train_tokenizer_streaming(train, val, config, tiny_preset.features, tmp_path / "parts", progress=False,
                              device="cpu", max_epochs_this_call=1)
    resumed = train_tokenizer_streaming(train, val, config, tiny_preset.features, tmp_path / "parts",
                                        progress=False, device="cpu")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(Exception, match="train_jets"):
        train_tokenizer_streaming(train, val, replace(config, train_jets=10), tiny_preset.features, tmp_path / "x")


def test_the_pipeline_trains_the_tokenizer_streamed_when_asked(tiny_preset, tiny_dataset):
    streaming = replace(tiny_preset, tokenizer=replace(tiny_preset.tokenizer, streaming=True))
    assert pipeline.tokenizer_key(streaming) != pipeline.tokenizer_key(tiny_preset)
    files, slots = pipeline.tokenizer_files(streaming)
    assert slots == 128 and set(files) == {f for fs in pipeline.pp_files(tiny_preset).values() for f in fs}
    tokenizer = pipeline.tokenizer(streaming, progress=False)
    history = __import__("json").loads((pipeline.tokenizer_dir(streaming) / "history.json").read_text())
    assert len(history) == streaming.tokenizer.epochs
    n_jets = len(pipeline.pp_jets(tiny_preset)[0])
    assert 0.8 * n_jets < tokenizer.metadata["n_train"] < n_jets
    assert pipeline.tokenizer(streaming, progress=False).metadata == tokenizer.metadata  # from the cache
