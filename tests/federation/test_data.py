import math

import numpy as np
import pytest
import torch

from federation.data import (
    DOMAINS,
    PRETRAIN_DOMAINS,
    build_federated_data,
    partition_dirichlet,
    partition_domain_shares,
    partition_iid,
    partition_shares,
    read_documents,
    unigram_perplexity,
)


def test_committed_corpus_has_every_domain_and_split():
    for domain in DOMAINS:
        train, valid = read_documents(domain, "train"), read_documents(domain, "valid")
        assert len(train) > 10 * len(valid) > 0
        assert not set(train) & set(valid)


def test_iid_partition_covers_every_item_once_and_is_seeded():
    shards = partition_iid(103, 4, np.random.default_rng(1))
    assert sorted(np.concatenate(shards).tolist()) == list(range(103))
    assert [len(s) for s in shards] == [26, 26, 26, 25]
    again = partition_iid(103, 4, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))


def test_dirichlet_partition_is_label_skewed_for_small_alpha():
    labels = np.repeat(np.arange(4), 250)
    shards = partition_dirichlet(labels, 8, 0.1, np.random.default_rng(0))
    assert sorted(np.concatenate(shards).tolist()) == list(range(1000))
    # with alpha=0.1 a typical device holds mostly one label
    dominant = [np.bincount(labels[s], minlength=4).max() / len(s) for s in shards]
    assert np.median(dominant) > 0.7
    iid_like = partition_dirichlet(labels, 8, 1000.0, np.random.default_rng(0))
    assert max(np.bincount(labels[s], minlength=4).max() / len(s) for s in iid_like) < 0.4


@pytest.mark.parametrize("kwargs, match", [
    ({"num_devices": 0}, "num_devices"),
    ({"alpha": 0.0}, "alpha"),
])
def test_partition_errors(kwargs, match):
    args = {"labels": np.zeros(10, dtype=int), "num_devices": 2, "alpha": 0.5, "rng": np.random.default_rng(0)} | kwargs
    with pytest.raises(ValueError, match=match):
        partition_dirichlet(**args)


def test_federated_data_uses_held_out_domain_and_server_share(foundation):
    _, tokenizer = foundation
    data = build_federated_data(tokenizer, 3, np.random.default_rng(0), server_fraction=0.2)
    total = sum(data.device_sizes) + len(data.server_blocks)
    assert data.num_devices == 3 and len(data.server_blocks) == round(0.2 * total)
    assert data.eval_blocks.shape[1] == 128
    with pytest.raises(ValueError, match="pretraining domain"):
        build_federated_data(tokenizer, 3, np.random.default_rng(0), domains=("kjv",))
    with pytest.raises(ValueError, match="partition must be one of"):
        build_federated_data(tokenizer, 3, np.random.default_rng(0), partition="shards")


def test_dirichlet_partition_never_fails_for_tiny_alpha():
    shards = partition_dirichlet(np.zeros(100, dtype=int), 10, 0.05, np.random.default_rng(3))
    sizes = sorted(len(s) for s in shards)
    assert sum(sizes) == 100 and sizes[0] >= 1 and sizes[-1] > 40  # a quantity skew; every device keeps one item


def test_partition_shares_follows_the_given_proportions():
    shards = partition_shares(1000, np.array([0.5, 0.3, 0.2, 0.0]), np.random.default_rng(0))
    assert sorted(np.concatenate(shards).tolist()) == list(range(1000))
    assert [len(s) for s in shards] == [499, 300, 200, 1]  # one each, then 996 cut at 498 and 797
    with pytest.raises(ValueError, match="shares must be >= 0"):
        partition_shares(10, np.array([0.5, -0.5]), np.random.default_rng(0))


def test_partition_domain_shares_splits_each_label_in_its_proportions():
    labels = np.array([0] * 100 + [1] * 50 + [2] * 10)
    shares = np.array([[0.5, 0.0, 0.2], [0.5, 0.2, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 0.0]])  # device 3: nothing drawn
    shards = partition_domain_shares(labels, shares, np.random.default_rng(0))
    assert sorted(np.concatenate(shards).tolist()) == list(range(160))  # every item dealt once
    counts = np.array([np.bincount(labels[s], minlength=3) for s in shards])
    assert counts[3].sum() == 1  # a device left empty gets one item from the device holding the most
    np.testing.assert_array_equal(counts[:3, 1], [0, 10, 40])
    assert counts[:, 2].sum() == 10 and counts[0, 0] + counts[1, 0] + counts[3, 0] == 100
    again = partition_domain_shares(labels, shares, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))
    with pytest.raises(ValueError, match="shares must be a finite, non-negative"):
        partition_domain_shares(labels, -shares, np.random.default_rng(0))


def test_federated_data_in_per_domain_shares(foundation):
    _, tokenizer = foundation
    shares = ((1.0, 0.0, 0.0), (0.0, 0.5, 0.5), (0.0, 0.5, 0.5))
    data = build_federated_data(tokenizer, 3, np.random.default_rng(0), domains=("pydocs", "licenses", "docstrings"),
                                device_domain_shares=shares)
    counts = np.array([np.bincount(labels, minlength=3) for labels in data.device_labels])
    assert counts[0, 1:].sum() == 0 and counts[1:, 0].sum() == 0 and abs(counts[1, 1] - counts[2, 1]) <= 1
    with pytest.raises(ValueError, match="give device_shares or device_domain_shares, not both"):
        build_federated_data(tokenizer, 3, np.random.default_rng(0), device_shares=(1, 1, 1),
                             device_domain_shares=((1.0,),) * 3)
    with pytest.raises(ValueError, match=r"device_domain_shares must have one row per device \(3\) and one entry per domain"):
        build_federated_data(tokenizer, 3, np.random.default_rng(0), device_domain_shares=((1.0, 0.0),) * 3)


def test_unigram_perplexity_by_hand():
    train = torch.tensor([[0, 0, 1, 2]])  # counts 2, 1, 1 of a vocabulary of 4, plus one each: 3, 2, 2, 1 of 8
    valid = torch.tensor([[3, 0, 3]])  # predicted tokens: 0 and 3
    assert unigram_perplexity(train, valid, 4) == pytest.approx(math.exp(-(math.log(3 / 8) + math.log(1 / 8)) / 2))


def test_pretraining_domains_are_not_tuning_domains(foundation):
    _, tokenizer = foundation
    for domain in PRETRAIN_DOMAINS:
        with pytest.raises(ValueError, match="must not include a pretraining domain"):
            build_federated_data(tokenizer, 2, np.random.default_rng(0), domains=(domain,))


def test_build_corpus_rebuilds_the_committed_splits_byte_for_byte(tmp_path):
    from experiments.cli import app
    from federation.data import CORPUS_DIR
    from tests.helpers import cli_runner

    result = cli_runner().invoke(app, ["build-corpus", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.txt.gz"))
    assert len(built) == 10  # five domains × train/valid
    for path in built:
        assert (tmp_path / path).read_bytes() == (CORPUS_DIR / path).read_bytes(), path


def test_more_devices_than_training_blocks_is_one_clear_error():
    from federation.engine import EngineConfig, RoundRunner

    with pytest.raises(ValueError, match=r"num_devices must be at most the \d+ training blocks of domains \('pydocs',\) "
                                         r"at block_size 128 \(after the server's share\), got 5000"):
        RoundRunner(EngineConfig(num_devices=5000))
