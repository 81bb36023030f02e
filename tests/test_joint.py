"""The joint analysis (notebook 06): event samples, the Deep Sets event model's invariances, frozen means frozen,
the metric definitions against hand-computed values, the pyhf fit, the scan store, the panel and the command."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tauml.config import ConfigError, GenerationConfig, GPTConfig, HeadConfig, JointConfig
from tauml.evaluation.joint import event_metrics, scalar_drift, working_point_index
from tauml.models.joint import EventModel, JetEncoder
from tauml.models.tau import build_tau_model
from tauml.training.joint import EventTensors, train_event_model

VOCAB = 20


def _encoder(seed: int = 1) -> JetEncoder:
    gpt = GPTConfig(n_layer=1, n_head=2, n_embd=16, ffn_dim=32, vocab_size=VOCAB, max_len=12)
    return JetEncoder(build_tau_model("id", "from_scratch", gpt, HeadConfig(n_heads=2, dropout=0.0), seed=seed))


def _jets(n_jets: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    lengths = torch.randint(2, 8, (n_jets,), generator=generator)
    mask = torch.arange(8)[None, :] < lengths[:, None]
    tokens = torch.randint(3, VOCAB, (n_jets, 8), generator=generator).masked_fill(~mask, 0)
    return {"tokens": tokens, "token_mask": mask}


@pytest.mark.parametrize("representation", ["s_hlf", "v_hlf", "v"])
def test_event_model_ignores_jet_order_and_padding(representation):
    g = torch.Generator().manual_seed(0)
    model = EventModel(_encoder(), representation, n_hlf=5, width=16, n_layers=2).eval()
    counts = [2, 3, 5]
    inputs = _jets(sum(counts), g)
    hlf_real = torch.randn(sum(counts), 5, generator=g)
    mask = torch.arange(5)[None, :] < torch.tensor(counts)[:, None]
    hlf = torch.zeros(3, 5, 5)
    hlf[mask] = hlf_real
    out = model(inputs, mask, hlf)

    # permute the jets inside each event (and their inputs along with them)
    order, start = [], 0
    for n in counts:
        order += (start + torch.randperm(n, generator=g)).tolist()
        start += n
    order = torch.tensor(order)
    hlf_perm = torch.zeros(3, 5, 5)
    hlf_perm[mask] = hlf_real[order]
    permuted = model({k: v[order] for k, v in inputs.items()}, mask, hlf_perm)
    assert torch.allclose(out, permuted, atol=1e-5)

    # more padding slots, filled with garbage (even NaN), change nothing
    wide_mask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], dim=1)
    wide_hlf = torch.full((3, 8, 5), float("nan"))
    wide_hlf[wide_mask] = hlf_real
    assert torch.allclose(out, model(inputs, wide_mask, wide_hlf), atol=1e-5)

    # and the model does see the jets: changing one real jet's HLF (or its tokens) changes that event only
    if representation != "v":
        changed = hlf.clone()
        changed[0, 0] += 3.0
        again = model(inputs, mask, changed)
        assert not torch.isclose(again[0], out[0]) and torch.allclose(again[1:], out[1:])


def test_event_model_refuses_a_float_jet_mask():
    model = EventModel(_encoder(), "v", n_hlf=5)
    with pytest.raises(TypeError, match="boolean"):
        model.head(torch.zeros(2, 3, 16), torch.ones(2, 3))


def _event_tensors(n_events: int, seed: int) -> EventTensors:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(2, 5, (n_events,), generator=g)
    jet_event = np.repeat(np.arange(n_events), counts.numpy())
    inputs = _jets(int(counts.sum()), g)
    labels = (torch.arange(n_events) % 2).float()
    hlf = torch.randn(int(counts.sum()), 5, generator=g) + labels[torch.as_tensor(jet_event)][:, None]
    return EventTensors(jet_inputs=inputs, jet_event=jet_event, hlf=hlf, labels=labels,
                        jet_labels=torch.zeros(int(counts.sum()), dtype=torch.long))


def test_frozen_means_frozen_and_finetuned_trains_the_jet_model():
    train, val = _event_tensors(64, 1), _event_tensors(32, 2)
    config = JointConfig(epochs_frozen=3, epochs_e2e=2, batch_size=16, width=8, n_layers=2)
    for strategy in ("frozen", "finetuned"):
        encoder = _encoder()
        start = {k: v.clone() for k, v in encoder.state_dict().items()}
        model = EventModel(encoder, "v_hlf", n_hlf=5, width=8, n_layers=2)
        head_start = [p.clone() for p in model.phi.parameters()]
        trained = train_event_model(model, strategy, train, val, config, torch.device("cpu"), progress=False).model
        trained.train()  # a frozen jet model stays in eval mode even when the event model trains
        same = all(torch.equal(start[k], v) for k, v in trained.encoder.state_dict().items())
        head_moved = any(not torch.equal(a, b) for a, b in zip(head_start, trained.phi.parameters()))
        if strategy == "frozen":
            assert same and not trained.encoder.training
            assert not any(p.requires_grad for p in trained.encoder.parameters())
            assert trained.phi.training and head_moved
        else:
            assert not same and trained.encoder.training


def test_event_tensors_refuse_jets_out_of_event_order():
    t = _event_tensors(4, 3)
    with pytest.raises(ValueError, match="grouped by event"):
        EventTensors(jet_inputs=t.jet_inputs, jet_event=t.jet_event[::-1].copy(), hlf=t.hlf, labels=t.labels,
                     jet_labels=t.jet_labels)


# ---------------------------------------------------------------------------------------------------------------
# Metrics against values computed by hand
# ---------------------------------------------------------------------------------------------------------------

SIGNAL = np.arange(10, 20, dtype=float)  # 10 signal events scoring 10 ... 19
BACKGROUND = np.array([0, 1, 2, 3, 4, 5, 6, 7, 10.5, 12.5])


def test_rejection_sic_and_auc_by_hand():
    scores = np.concatenate([SIGNAL, BACKGROUND])
    labels = np.concatenate([np.ones(10), np.zeros(10)])
    m = event_metrics(scores, labels)
    # the paper's working point: grid index int(0.9 * 10000) - 1 = 8999, eps_S = 8999 / 9999
    assert working_point_index(0.9) == 8999 and m["signal_efficiency"] == pytest.approx(8999 / 9999)
    # between eps_S = 0.8 (cut at 12) and 0.9 (cut at 11) only the background at 12.5 passes: eps_B = 1/10
    assert m["background_efficiency"] == pytest.approx(0.1) and m["rejection"] == pytest.approx(10.0)
    assert m["sic"] == pytest.approx((8999 / 9999) / math.sqrt(0.1))
    # pairs (signal above background): 10 x 8 below every signal, 9 above 10.5, 7 above 12.5 -> 96 of 100
    assert m["auc"] == pytest.approx(0.96)
    assert not m["rejection_limited"] and m["n_signal"] == 10 and m["n_background"] == 10
    # weighted: the background at 12.5 counts 3 of 12 -> eps_B = 0.25, rejection 4
    weights = np.concatenate([np.ones(10), np.ones(9), [3.0]])
    assert event_metrics(scores, labels, weights)["rejection"] == pytest.approx(4.0)


def test_rejection_without_passing_background_is_a_bound():
    scores = np.concatenate([SIGNAL, np.arange(8)])
    m = event_metrics(scores, np.concatenate([np.ones(10), np.zeros(8)]))
    assert m["rejection_limited"] and m["rejection"] == pytest.approx(8.0)  # one background event of 8


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="both signal"):
        event_metrics(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        event_metrics(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="weights"):
        event_metrics(np.array([0.1, 0.2]), np.array([0, 1]), weights=np.array([1.0, -1.0]))


def test_scalar_drift_takes_the_better_sign_only_when_asked():
    labels = np.concatenate([np.ones(10), np.zeros(10)])
    scores = -np.concatenate([SIGNAL, BACKGROUND])  # an anti-tagger
    assert scalar_drift(scores, labels)["jet_auc"] == pytest.approx(0.04)
    free = scalar_drift(scores, labels, reference={"jet_rejection": 20.0}, sign_free=True)
    assert free["jet_auc"] == pytest.approx(0.96) and free["rejection_ratio"] == pytest.approx(0.5)


def test_pyhf_discovery_significance_matches_the_asimov_formula():
    pytest.importorskip("pyhf")
    from tauml.evaluation.significance import binned_templates, expected_sensitivity

    # one bin: signal 30, background 100 with a 1 % MC error, Z0 ~ sqrt(2((s+b)ln(1+s/b)-s)) = 2.87
    templates = {"signal": np.array([30.0]), "background": np.array([100.0]), "background_error": np.array([1.0])}
    expected = math.sqrt(2 * ((130) * math.log(1.3) - 30))
    result = expected_sensitivity(templates)
    assert result["z0"] == pytest.approx(expected, rel=0.02)
    # the expected CLs limit: pyhf's own grid scan gives 0.700 for this model
    assert result["mu_95"] == pytest.approx(0.70, rel=0.03)
    rng = np.random.default_rng(1)
    good = binned_templates(rng.beta(6, 2, 400), np.full(400, 0.05), rng.beta(2, 6, 4000), np.full(4000, 1.0), 10.0)
    poor = binned_templates(rng.beta(3, 2, 400), np.full(400, 0.05), rng.beta(2, 3, 4000), np.full(4000, 1.0), 10.0)
    assert np.allclose(good["signal"], 400 * 0.05 * 10.0 / 8)
    # every background event counts 10; a bin without any gets one event's worth (never an empty bin)
    assert good["empty_background_bins"] > 0 and np.all(good["background"] > 0)
    assert good["background"].sum() == pytest.approx(40000 + 10 * good["empty_background_bins"])
    assert expected_sensitivity(good)["z0"] > expected_sensitivity(poor)["z0"]
    with pytest.raises(ValueError, match="luminosity"):
        binned_templates(np.ones(10), np.ones(10), np.ones(3), np.ones(3), 0.0)


def test_joint_config_refuses_impossible_settings():
    for bad in (dict(case="ttbar"), dict(representation="s"), dict(strategy="frozen_then_free"), dict(train_size=0),
                dict(jet_model="part", strategy="foundation"), dict(jet_model="gnn")):
        with pytest.raises(ConfigError):
            JointConfig(**bad).validate()


# ---------------------------------------------------------------------------------------------------------------
# Event samples: real Pythia events through the detector and the jet clustering
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def event_samples(tmp_path_factory):
    from tauml.data.generate import generate

    config = GenerationConfig(events={"ee_zh": 40, "ee_qq": 40, "hh4b_m2000": 30, "qcd_multijet": 30}, seed=5,
                              chunk_events=20)
    return generate(config, tmp_path_factory.mktemp("joint-events"), workers=1, progress=False)


def test_event_samples_hold_every_selected_jet_and_a_cross_section(event_samples):
    from tauml.data.events import HLF_NAMES, MAX_JETS, read_sample

    manifest = event_samples.manifest["samples"]
    for case, sample in (("zh_tautau", "ee_zh"), ("zh_tautau", "ee_qq"), ("hh4b", "hh4b_m2000"),
                         ("hh4b", "qcd_multijet")):
        info = manifest[sample]
        assert info["sigma_fb"] > 0 and info["events"] in (30, 40)
        events = read_sample(event_samples.events(sample), case, sample, info["sigma_fb"], info["events"],
                             max_constituents=32)
        n_jets = events.n_jets
        assert len(events) > 0 and n_jets.min() >= 2 and n_jets.max() <= MAX_JETS
        assert events.hlf.shape == (len(events.jets), len(HLF_NAMES[case])) and np.isfinite(events.hlf).all()
        pt = events.jets.jet_pt
        for e in range(len(events)):  # leading jets first
            assert np.all(np.diff(pt[events.jet_event == e]) <= 1e-3)
        assert np.all(events.label == int(sample in ("ee_zh", "hh4b_m2000")))
        assert events.weight.sum() == pytest.approx(info["sigma_fb"] * len(events) / info["events"])
        if case == "hh4b":
            assert events.jets.jet_pt.min() > 200
            # the H -> b bbar jets are in the signal only
            assert events.jet_label.mean() > 0.3 if sample == "hh4b_m2000" else events.jet_label.sum() == 0
        else:
            assert events.jet_label.sum() > 0 if sample == "ee_zh" else events.jet_label.sum() == 0


def test_event_sample_subsets_keep_jets_with_their_events(event_samples):
    from tauml.data.events import read_sample

    info = event_samples.manifest["samples"]["ee_zh"]
    events = read_sample(event_samples.events("ee_zh"), "zh_tautau", "ee_zh", info["sigma_fb"], info["events"])
    pick = np.array([3, 0, 2])
    sub = events.subset(pick)
    assert list(sub.event_number) == list(events.event_number[pick])
    for new, old in enumerate(pick):
        assert np.allclose(sub.hlf[sub.jet_event == new], events.hlf[events.jet_event == old])
    with pytest.raises(Exception, match="not part of the use case"):
        read_sample(event_samples.events("ee_zh"), "hh4b", "ee_zh", 1.0, 10)


# ---------------------------------------------------------------------------------------------------------------
# The cached pipeline, the panel and the command on the tiny preset
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_joint(tiny_preset, tiny_dataset):
    from tauml.config import JOINT_GENERATION

    JOINT_GENERATION["tiny"] = GenerationConfig(events={"ee_zh": 160, "ee_z": 80, "ee_zz": 60, "ee_qq": 80}, seed=7,
                                                chunk_events=80)
    yield tiny_preset
    JOINT_GENERATION.pop("tiny", None)


@pytest.mark.slow
def test_points_are_stored_and_not_trained_twice(tiny_joint):
    from tauml.pipeline import joint
    from tauml.studies import joint as study

    settings = dict(val_size=20, epochs_frozen=2, epochs_e2e=1, width=8, n_layers=2)
    points = study.study_points("zh_tautau", [("s_hlf", "frozen"), ("s_hlf", "finetuned")], [60], [1, 2], **settings)
    records = joint.run_points(tiny_joint, points, progress=False)
    assert len(records) == 4 and all(r["test_scores"] is not None for r in records)
    test = joint.test_events(tiny_joint, "zh_tautau")
    assert len(records[0]["test_scores"]) == len(test)
    finetuned = [r for r in records if r["config"]["strategy"] == "finetuned"]
    assert all("scalar_jet_auc" in r["metrics"] for r in finetuned)
    stamps = [r["finished"] for r in records]
    again = joint.run_points(tiny_joint, points, progress=False)
    assert [r["finished"] for r in again] == stamps  # read, not trained again
    table = study.rejection_table(records)
    assert table[0]["strategy"] == "frozen" and "±" in table[0]["S+HLF"]
    significance = study.significance_rows(tiny_joint, "zh_tautau", records)
    assert len(significance) == 2 and all(row["Z0 (expected)"] >= 0 for row in significance)


@pytest.mark.slow
def test_the_particle_transformer_runs_the_joint_analysis_end_to_end(tiny_joint):
    from tauml.pipeline import joint
    from tauml.studies import joint as study

    settings = dict(val_size=20, epochs_frozen=2, epochs_e2e=2, width=8, n_layers=2, batch_size=16, lookahead_k=2)
    models = [("s_hlf", "frozen"), ("s_hlf", "finetuned"), ("v", "from_scratch")]
    points = study.study_points("zh_tautau", models, [60], [1], jet_model="part", **settings)
    records = joint.run_points(tiny_joint, points, progress=False)
    test = joint.test_events(tiny_joint, "zh_tautau")
    assert [r["config"]["jet_model"] for r in records] == ["part"] * 3
    for record in records:
        assert len(record["test_scores"]) == len(test) and np.isfinite(record["test_scores"]).all()
        assert 0.0 <= record["metrics"]["auc"] <= 1.0
        strategy = record["config"]["strategy"]
        epochs = settings["epochs_frozen"] if strategy == "frozen" else settings["epochs_e2e"]
        assert len(record["history"]["val_loss"]) == epochs
    finetuned = next(r for r in records if r["config"]["strategy"] == "finetuned")
    assert 0.0 <= finetuned["metrics"]["scalar_jet_auc"] <= 1.0  # Table IV's S slot, read from ParT's output
    # the pretext tagger is notebook 03's ParticleTransformer, not the GPT model: its no-learning reference differs
    assert not np.array_equal(joint.pretext_event_scores(tiny_joint, "zh_tautau", "part"),
                              joint.pretext_event_scores(tiny_joint, "zh_tautau", "gpt"))
    table = study.rejection_table(records)
    assert {row["strategy"] for row in table} == {"frozen", "finetuned", "from_scratch"}


@pytest.mark.slow
def test_joint_panel_headless(tiny_joint):
    from tauml.widgets.joint import joint_panel

    panel = joint_panel(tiny_joint, seeds=(1,), val_size=20, epochs_frozen=2, width=8, n_layers=2)
    panel.case.value = "zh_tautau"
    panel.representation.value = "v_hlf"
    panel.strategy.value = "frozen"
    panel.train_size.value = 50
    panel.show_button.click()
    assert panel.message.value == ""
    assert len(panel.plot_output.outputs) == 1 and len(panel.table_output.outputs) == 1
    panel.train_size.value = 100_000  # more training events than generated: a message, nothing trained
    panel.show_button.click()
    assert "generate more events" in panel.message.value


@pytest.mark.slow
def test_command_line_joint(tiny_joint, capsys):
    from tauml.cli import main

    assert main(["joint", "--case", "hh4b", "--jet-model", "part", "--strategy", "foundation", "--quiet"]) == 2
    assert "foundation" in capsys.readouterr().err
    assert main(["joint", "--case", "zh_tautau", "--train-sizes", "0"]) == 2
    assert main(["joint", "--case", "zh_tautau", "--lookahead-k", "-1"]) == 2
    assert "--lookahead-k" in capsys.readouterr().err
    assert main(["joint", "--case", "zh_tautau", "--batch-size", "0"]) == 2


def test_joint_samples_leave_the_existing_samples_seeds_alone():
    # the joint analysis appends samples: the chunk seeds of the existing ones (and so their events) stay the same
    from tauml.data.pythia import SAMPLE_INDEX, pythia_seed

    assert [SAMPLE_INDEX[s] for s in ("z", "zh", "qq", "ZJetsToNuNu", "TTBar")] == [0, 1, 2, 3, 4]
    assert pythia_seed(1, "TTBar", 2) == 1 + (1_000_003 + 4 * 10_007 + 2 * 7_919) % 899_999_999


def test_the_particle_transformer_is_a_jet_model_too():
    pytest.importorskip("weaver")
    from tauml.config import ParTBaselineConfig
    from tauml.models.baselines import ParticleTransformerBaseline

    part = ParticleTransformerBaseline("id", ParTBaselineConfig(embed_dims=(16, 32, 16), pair_embed_dims=(8, 8),
                                                                num_heads=2, num_layers=1, num_cls_layers=1))
    encoder = JetEncoder(part).eval()
    g = torch.Generator().manual_seed(0)
    mask = torch.arange(6)[None, :] < torch.tensor([3, 6, 2, 4])[:, None]
    features = torch.randn(4, 6, 10, generator=g)
    p4 = torch.rand(4, 6, 4, generator=g) + torch.tensor([0.0, 0.0, 0.0, 2.0])
    v, s = encoder(features=features, mask=mask, p4=p4)
    assert v.shape == (4, 16) and s.shape == (4,)
    logits = part(features, mask, p4)
    assert torch.allclose(s, logits[:, 1] - logits[:, 0])  # S is the tagger's log-odds
    assert torch.allclose(part.part.fc(v), logits, atol=1e-6)  # and V what its output layer reads
    model = EventModel(encoder, "v_hlf", n_hlf=5, width=8, n_layers=2).eval()
    jet_mask = torch.tensor([[True, True, False], [True, True, False]])
    out = model({"features": features, "mask": mask, "p4": p4}, jet_mask, torch.randn(2, 3, 5, generator=g))
    assert out.shape == (2,) and torch.isfinite(out).all()


def test_lookahead_moves_the_slow_weights_halfway_every_k_steps():
    from tauml.training.joint import Lookahead

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    sgd = torch.optim.SGD([w], lr=1.0)
    lookahead = Lookahead([w], k=2, alpha=0.5)
    g = torch.tensor([0.25, 0.5])
    seen = []
    for _ in range(4):
        w.grad = g.clone()
        sgd.step()
        lookahead.step()
        seen.append(w.detach().clone())
    start = torch.tensor([1.0, -2.0])
    # step 1: fast only; step 2: fast at start - 2g, slow (and fast) to start + 0.5 (-2g) = start - g
    assert torch.allclose(seen[0], start - g) and torch.allclose(seen[1], start - g)
    assert torch.allclose(seen[2], start - 2 * g) and torch.allclose(seen[3], start - 2 * g)
    with pytest.raises(ValueError, match="k >= 1"):
        Lookahead([w], k=0)


def test_a_lookahead_setting_that_is_impossible_is_refused():
    from tauml.config import identity_dict

    with pytest.raises(ConfigError, match="lookahead_k"):
        JointConfig(lookahead_k=-1).validate()
    assert "lookahead_k" not in identity_dict(JointConfig())  # the caches of RAdam alone stay valid
    assert identity_dict(JointConfig(lookahead_k=6))["lookahead_k"] == 6
