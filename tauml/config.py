"""Every setting of tauml, as frozen dataclasses, and the two presets ``demo`` and ``paper``.

A preset is one :class:`Preset`: what data to generate (or read), how to build and train the tokenizer,
the GPT backbone and the tau models.  ``demo`` runs the whole notebook series on 2 CPU cores within
2 GB in minutes; ``paper`` holds the settings of the core paper (Tani, Pata, Birk, arXiv:2503.19165)
and of OmniJet-alpha (arXiv:2403.05618) for GPUs and the real datasets.

Change one setting with :func:`dataclasses.replace`::

    from dataclasses import replace
    from tauml.config import get_preset
    preset = get_preset("demo")
    preset = replace(preset, finetune=replace(preset.finetune, epochs=30))

Every configuration object has a stable :func:`config_hash`, which names its cached results.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from typing import Any

#: Samples that can be generated.  e+e- at 380 GeV in the Fu(tau)ure schema, pp at 13 TeV in the JetClass schema.
EE_SAMPLES: tuple[str, ...] = ("z", "zh", "qq")
PP_SAMPLES: tuple[str, ...] = ("ZJetsToNuNu", "TTBar")
#: Event-level samples of the joint analysis (notebook 06, docs/joint.md): every selected reco jet of each event
#: with its constituents.  e+e- at 380 GeV: ZH with H -> tau tau (signal) against Z/gamma* -> tau tau, ZZ and q qbar;
#: pp at 13 TeV: X -> HH -> b bbar b bbar at three masses (GeV) against QCD multijets.
EE_EVENT_SAMPLES: tuple[str, ...] = ("ee_zh", "ee_z", "ee_zz", "ee_qq")
PP_EVENT_SAMPLES: tuple[str, ...] = ("hh4b_m1000", "hh4b_m2000", "hh4b_m3000", "qcd_multijet")
EVENT_SAMPLES: tuple[str, ...] = EE_EVENT_SAMPLES + PP_EVENT_SAMPLES
ALL_SAMPLES: tuple[str, ...] = EE_SAMPLES + PP_SAMPLES + EVENT_SAMPLES

TASKS: tuple[str, ...] = ("id", "reg", "dm")
STRATEGIES: tuple[str, ...] = ("from_scratch", "fixed_backbone", "fine_tuning")
#: Supervised baselines trained on the candidates directly; accepted wherever a strategy is.
BASELINES: tuple[str, ...] = ("part", "deepset")


#: What the backbone reads per constituent (:attr:`GPTConfig.inputs`): the token ids, or the continuous features
#: (the "hybrid" of arXiv:2512.04149: continuous inputs, token ids as the next-token and masked-particle targets).
BACKBONE_INPUTS: tuple[str, ...] = ("tokens", "continuous")

#: The named data sources (:attr:`Preset.data`): the preset's generated events, or the files ``tauml fetch``
#: stored.  Any other value is a folder, a file or a glob of data files (several joined by ``os.pathsep``).
DATA_SOURCES: tuple[str, ...] = ("generated", "files")


class ConfigError(ValueError):
    """A setting has an impossible value; the message names the setting and what it accepts."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _data_source_problem(source: Any) -> str | None:
    """Why ``source`` cannot be a data source (a path or glob that names nothing), or None; cheap (no reading)."""
    if not isinstance(source, str) or not source.strip():
        return "give 'generated', 'files' or a folder, file or glob of data files"
    if source in DATA_SOURCES:
        return None
    for part in source.split(os.pathsep):
        part = os.path.expanduser(part)
        if any(c in part for c in "*?["):
            if not glob.glob(part, recursive=True):
                return f"the pattern {part!r} matches no file"
        elif not os.path.exists(part):
            return f"{part} does not exist"
    return None


def added_setting(default: Any) -> Any:
    """Declare a setting added after results were cached: while it keeps ``default`` it is left out of
    :func:`identity_dict` (and so of :func:`config_hash`), so the caches built before it existed stay valid.

    Use it for every setting added to an existing dataclass: ``use_widget: bool = added_setting(False)``.
    A non-default value enters the hash like any other setting.
    """
    return field(default=default, metadata={"added": True})


# ----------------------------------------------------------------------------------------------------------
# Detector models (every number is explained, with its source, in docs/detector.md)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EEDetectorConfig:
    """CLIC-like parametric response for e+e- events (CLICdet, arXiv:1812.07337; CLIC CDR arXiv:1202.5940).

    Energies in GeV, lengths in mm, angles in radians.  ``realistic=False`` switches off every
    particle-flow imperfection at once (photon merging, conversions, fake neutral fragments, track
    tails and losses, neutral-hadron confusion), leaving only resolutions, acceptance and thresholds.
    The individual ``*_on`` flags switch single effects when ``realistic`` is true.
    """

    realistic: bool = True
    # acceptance
    cos_theta_max: float = 0.98  # tracker + calorimeter coverage, theta > 11.5 degrees
    # tracking
    track_pt_min: float = 0.1  # GeV
    track_efficiency: float = 0.98
    track_max_production_radius: float = 600.0  # mm, beyond it a charged particle leaves no track
    track_pt_res_a: float = 2.0e-5  # sigma(pT)/pT^2 in 1/GeV
    track_pt_res_b: float = 1.0e-3  # multiple-scattering term, sigma(pT)/pT = b / sin(theta)
    track_tail_fraction: float = 0.02  # fraction of tracks with a mismeasured momentum
    track_tail_scale: float = 10.0  # their resolution is this many times worse
    d0_res_a: float = 0.005  # mm, sigma(d0) = a (+) b / (p sin^(3/2) theta)
    d0_res_b: float = 0.015  # mm GeV
    z0_res_a: float = 0.005  # mm
    z0_res_b: float = 0.015  # mm GeV
    # calorimetry
    ecal_stochastic: float = 0.15  # sigma(E)/E = 15%/sqrt(E) (+) 1%
    ecal_constant: float = 0.01
    hcal_stochastic: float = 0.50  # sigma(E)/E = 50%/sqrt(E) (+) 5%
    hcal_constant: float = 0.05
    photon_e_min: float = 0.5  # GeV, PandoraPFA-like photon threshold
    neutral_hadron_e_min: float = 1.0  # GeV
    ecal_inner_radius: float = 1500.0  # mm, distance used to turn angles into shower separations
    ecal_angular_res: float = 0.002  # rad, cluster position resolution
    hcal_angular_res: float = 0.01  # rad
    # particle-flow imperfections (active only with realistic=True)
    photon_merging_on: bool = True
    photon_merge_distance: float = 20.0  # mm at the ECAL face: closer showers form one cluster
    conversions_on: bool = True
    conversion_probability: float = 0.08  # per photon at normal incidence, grows as 1/sin(theta)
    conversion_radius_max: float = 1500.0  # mm, uniform in radius over the tracker volume (outer radius 1.5 m)
    fake_neutrals_on: bool = True
    fake_neutral_probability: float = 0.15  # per charged hadron above fake_neutral_e_min
    fake_neutral_e_min: float = 5.0  # GeV
    fake_neutral_fraction_max: float = 0.3  # fragment energy is up to this fraction of the hadron's
    fake_photon_fraction: float = 0.3  # fragments in the ECAL become photons, the others neutral hadrons
    neutral_confusion_on: bool = True
    neutral_confusion_angle: float = 0.03  # rad, a neutral hadron this close to a track can be absorbed
    neutral_confusion_probability: float = 0.5
    lepton_id_on: bool = True
    electron_id_efficiency: float = 0.95  # otherwise reconstructed as a charged hadron
    muon_id_efficiency: float = 0.97
    muon_p_min: float = 2.0  # GeV, muons below it do not reach the muon system
    pion_to_electron_rate: float = 0.005
    pion_to_muon_rate: float = 0.003

    def validate(self) -> None:
        _check(0.0 < self.cos_theta_max <= 1.0, f"cos_theta_max={self.cos_theta_max} must lie in (0, 1]")
        for name in ("track_efficiency", "track_tail_fraction", "conversion_probability",
                     "fake_neutral_probability", "fake_photon_fraction", "neutral_confusion_probability",
                     "electron_id_efficiency", "muon_id_efficiency", "pion_to_electron_rate", "pion_to_muon_rate"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{name}={value} is a probability and must lie in [0, 1]")
        for name in ("track_pt_res_a", "track_pt_res_b", "ecal_stochastic", "hcal_stochastic",
                     "photon_merge_distance", "ecal_inner_radius"):
            value = getattr(self, name)
            _check(value >= 0.0, f"{name}={value} must not be negative")


@dataclass(frozen=True)
class PPDetectorConfig:
    """Delphes-CMS-like response for pp events (Delphes card ``delphes_card_CMS.tcl``, the card of JetClass).

    Tracks for charged particles, ECAL and HCAL towers on an (eta, phi) grid whose deposits become photon
    and neutral-hadron candidates (Delphes EFlow).  Energies in GeV, lengths in mm.
    """

    realistic: bool = True
    eta_max_tracker: float = 2.5
    eta_max_calo: float = 3.0
    track_pt_min: float = 0.5  # GeV
    track_efficiency_low: float = 0.90  # 0.5 < pT < 1 GeV
    track_efficiency_high: float = 0.95  # pT > 1 GeV, |eta| < 1.5; 0.85 for 1.5 < |eta| < 2.5
    track_efficiency_forward: float = 0.85
    track_pt_res_a: float = 0.005  # sigma(pT)/pT = a (+) b pT (barrel), from the CMS card's momentum smearing
    track_pt_res_b: float = 1.5e-4  # 1/GeV
    ecal_cell: float = 0.02  # eta and phi size of an ECAL tower
    hcal_cell: float = 0.087  # eta and phi size of an HCAL tower
    ecal_a: float = 0.007  # sigma(E) = sqrt((a E)^2 + b^2 E + c^2), CMS card ECAL barrel
    ecal_b: float = 0.07
    ecal_c: float = 0.35
    hcal_a: float = 0.050  # sigma(E) = sqrt((a E)^2 + b^2 E), CMS card HCAL barrel
    hcal_b: float = 1.50
    ecal_e_min: float = 0.5  # GeV, tower threshold
    hcal_e_min: float = 1.0  # GeV
    d0_res: float = 0.02  # mm, impact parameter resolution (Delphes TrackSmearing, approximate)
    z0_res: float = 0.03  # mm
    electron_id_efficiency: float = 0.95
    muon_id_efficiency: float = 0.95

    def validate(self) -> None:
        for name in ("track_efficiency_low", "track_efficiency_high", "track_efficiency_forward",
                     "electron_id_efficiency", "muon_id_efficiency"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{name}={value} is a probability and must lie in [0, 1]")
        _check(self.ecal_cell > 0 and self.hcal_cell > 0, "ecal_cell and hcal_cell must be positive")


# ----------------------------------------------------------------------------------------------------------
# Data generation
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationConfig:
    """What the embedded dataset contains: events per sample, seed, chunking, detector models.

    ``events`` maps a sample name (``z``, ``zh``, ``qq``, ``ZJetsToNuNu``, ``TTBar``) to a number of
    generated events.  Events are produced in chunks of ``chunk_events``; a finished chunk is kept on
    disk, so an interrupted run resumes where it stopped.
    """

    events: dict[str, int] = field(default_factory=dict)
    seed: int = 1
    chunk_events: int = 1000
    ee_sqrt_s: float = 380.0  # GeV
    pp_sqrt_s: float = 13000.0  # GeV
    test_fraction: float = 0.2  # Fu(tau)ure merges shuffle and split 80/20
    ee_detector: EEDetectorConfig = field(default_factory=EEDetectorConfig)
    pp_detector: PPDetectorConfig = field(default_factory=PPDetectorConfig)

    def validate(self) -> None:
        _check(bool(self.events), "events is empty: name at least one sample, e.g. {'z': 5000}")
        for sample, n in self.events.items():
            _check(sample in ALL_SAMPLES, f"unknown sample {sample!r}; choose from {', '.join(ALL_SAMPLES)}")
            _check(isinstance(n, int) and n > 0, f"events[{sample!r}]={n!r} must be a positive integer")
        _check(self.chunk_events > 0, f"chunk_events={self.chunk_events} must be positive")
        _check(0 < self.seed < 2**31, f"seed={self.seed} must lie in 1 .. 2**31-1")
        _check(0.0 < self.test_fraction < 1.0, f"test_fraction={self.test_fraction} must lie in (0, 1)")
        self.ee_detector.validate()
        self.pp_detector.validate()


# ----------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureConfig:
    """Per-constituent inputs (the core paper's Table 2) and their transforms, shared by every model.

    x' = (x - shift) * scale, applied after the named function.  See docs/features.md.
    """

    log_pt_shift: float = 1.8  # ln(pT / GeV) - 1.8, as OmniJet-alpha
    mass_scale: float = 5.0  # m / GeV * 5: photons 0, pions 0.70, K0L 2.49
    angle_scale: float = 3.0  # signed delta-eta and delta-phi to the jet axis, times 3, as OmniJet-alpha
    angle_clip: float = 3.0  # transformed angles are clipped to +-3 (|delta| <= 1 rad), never dropped
    max_constituents_tau: int = 16
    max_constituents_jetclass: int = 128

    def validate(self) -> None:
        _check(self.mass_scale > 0 and self.angle_scale > 0, "mass_scale and angle_scale must be positive")
        _check(self.max_constituents_tau > 0 and self.max_constituents_jetclass > 0,
               "max_constituents_* must be positive")


# ----------------------------------------------------------------------------------------------------------
# Models and training
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerConfig:
    """VQ-VAE tokenizer (OmniJet-alpha's NormFormer VQ-VAE with the core paper's latent size 8)."""

    codebook_size: int = 512
    latent_dim: int = 8
    hidden_dim: int = 64
    n_blocks: int = 2  # NormFormer blocks in the encoder and again in the decoder
    n_heads: int = 4
    dropout: float = 0.0
    beta: float = 0.9  # weight of the codebook term in the VQ loss, (1 - beta) for the commitment term
    vq_weight: float = 10.0  # alpha in loss = reconstruction + alpha * vq
    categorical_weight: float = 1.0  # weight of the charge and particle-type cross entropies
    categorical_loss: str = "cross_entropy"  # or "mse" (the reference's squared error on one-hot flags)
    dead_code_patience: int = 100  # steps without use before a code is replaced (the paper: 100)
    kmeans_iterations: int = 20
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-2
    grad_clip: float = 5.0
    train_jets: int = 20_000  # JetClass-like jets used for training (0 = all available)
    val_fraction: float = 0.1
    seed: int = 1603
    #: the jets the tokenizer learns from: "pp" (the JetClass-like pp jets, the paper) or "ee" (every jet of the
    #: e+e- training files, tau and quark jets: the core paper's outlook of a tokenizer in the target domain)
    train_on: str = added_setting("pp")
    #: train on jets streamed from feature shards (one per input file, float32 features, no padding), so memory
    #: does not grow with the data (the medium and paper presets); False: all jets padded in memory (the demo)
    streaming: bool = added_setting(False)

    def validate(self) -> None:
        _check(self.codebook_size >= 2, f"codebook_size={self.codebook_size} must be at least 2")
        _check(self.latent_dim > 0 and self.hidden_dim > 0, "latent_dim and hidden_dim must be positive")
        _check(self.hidden_dim % self.n_heads == 0,
               f"hidden_dim={self.hidden_dim} must be divisible by n_heads={self.n_heads}")
        _check(0.0 <= self.beta <= 1.0, f"beta={self.beta} must lie in [0, 1]")
        _check(self.categorical_loss in ("cross_entropy", "mse"),
               f"categorical_loss={self.categorical_loss!r} must be 'cross_entropy' or 'mse'")
        _check(self.dead_code_patience > 0, "dead_code_patience must be positive")
        _check(self.epochs > 0 and self.batch_size > 0 and self.lr > 0, "epochs, batch_size and lr must be positive")
        _check(0.0 < self.val_fraction < 1.0, f"val_fraction={self.val_fraction} must lie in (0, 1)")
        _check(self.train_on in TOKENIZER_DOMAINS,
               f"train_on={self.train_on!r}; choose from {', '.join(TOKENIZER_DOMAINS)}")
        _check(not (self.streaming and self.train_jets), f"train_jets={self.train_jets} limits the in-memory "
               "tokenizer training only; with streaming=True give fewer files (Preset.pp_jets_per_sample) or set "
               "train_jets=0")


#: What a tokenizer may be trained on (TokenizerConfig.train_on).
TOKENIZER_DOMAINS: tuple[str, ...] = ("pp", "ee")


@dataclass(frozen=True)
class GPTConfig:
    """GPT backbone (nanoGPT-style, no positional encoding: a jet is a set ordered by pT).

    ``vocab_size`` is filled in from the tokenizer (codebook size + 3 special tokens).  ``inputs`` is what the
    backbone reads per constituent: ``"tokens"`` (the token ids, OmniJet-alpha) or ``"continuous"`` (the
    constituent features of :mod:`tauml.data.features`, the tokenizer's own inputs, through a small MLP; the token
    ids stay the targets: the hybrid of arXiv:2512.04149).  See docs/backbone.md.
    """

    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 64
    ffn_dim: int = 256
    dropout: float = 0.0
    max_len: int = 130  # longest token sequence: start + 128 constituents + stop
    vocab_size: int = 0
    inputs: str = added_setting("tokens")

    def validate(self) -> None:
        _check(self.inputs in BACKBONE_INPUTS, f"inputs={self.inputs!r}; choose from {', '.join(BACKBONE_INPUTS)}")
        _check(self.n_layer > 0, f"n_layer={self.n_layer} must be positive")
        _check(self.n_embd % self.n_head == 0, f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        _check(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must lie in [0, 1)")


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining of the backbone on tokenized JetClass-like jets.

    The objective is ``ntp_weight`` x next-token prediction (causal pass) + ``mpm_weight`` x masked particle
    modelling (a fraction ``mask_fraction`` of each jet's constituents hidden, their token ids predicted from a
    bidirectional pass; arXiv:2401.13537, arXiv:2512.04149).  The default is next-token prediction alone.
    """

    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 50
    min_lr_fraction: float = 0.1
    grad_clip: float = 5.0
    train_jets: int = 0  # 0 = all available
    val_fraction: float = 0.1
    seed: int = 1603
    device: str = "auto"  # "auto" picks cuda when available
    bf16: bool = True  # autocast to bfloat16 on CUDA
    ntp_weight: float = added_setting(1.0)  # weight of next-token prediction in the pretraining loss
    mpm_weight: float = added_setting(0.0)  # weight of masked particle modelling
    mask_fraction: float = added_setting(0.15)  # share of a jet's constituents hidden for MPM (at least one)
    #: True: tokenize the pp files once into token shards on disk and stream batches from them (memory flat in
    #: the number of jets, docs/training.md); False: tokens in memory (as the demo's cached backbone was built)
    streaming: bool = added_setting(False)

    def validate(self) -> None:
        _check(self.epochs > 0 and self.batch_size > 0 and self.lr > 0, "epochs, batch_size and lr must be positive")
        _check(0.0 < self.val_fraction < 1.0, f"val_fraction={self.val_fraction} must lie in (0, 1)")
        _check(self.ntp_weight >= 0 and self.mpm_weight >= 0 and self.ntp_weight + self.mpm_weight > 0,
               f"ntp_weight={self.ntp_weight} and mpm_weight={self.mpm_weight} must not be negative and not both 0")
        _check(0.0 < self.mask_fraction < 1.0, f"mask_fraction={self.mask_fraction} must lie in (0, 1)")
        _check(not (self.streaming and self.train_jets), "train_jets limits the in-memory pretraining only; with "
               "streaming=True give fewer files instead, or set train_jets=0")


@dataclass(frozen=True)
class HeadConfig:
    """ParticleTransformer-style task head: particle-attention then class-attention blocks."""

    n_particle_blocks: int = 2
    n_class_blocks: int = 2
    n_heads: int = 4
    ffn_ratio: int = 4
    dropout: float = 0.1

    def validate(self) -> None:
        _check(self.n_particle_blocks >= 0 and self.n_class_blocks >= 1, "a head needs at least one class block")


@dataclass(frozen=True)
class ParTBaselineConfig:
    """The supervised ParticleTransformer baseline (weaver-core; ``paper``: ml-tau-en-reg's plain ParT, reference C.1)."""

    embed_dims: tuple[int, ...] = (64, 128, 64)
    pair_embed_dims: tuple[int, ...] = (32, 32, 32)
    num_heads: int = 4
    num_layers: int = 2
    num_cls_layers: int = 2
    dropout: float = 0.1
    use_lifetime: bool = False

    def validate(self) -> None:
        _check(len(self.embed_dims) >= 1 and all(d > 0 for d in self.embed_dims),
               f"part.embed_dims={self.embed_dims}: give one or more positive widths")
        _check(len(self.pair_embed_dims) >= 1 and all(d > 0 for d in self.pair_embed_dims),
               f"part.pair_embed_dims={self.pair_embed_dims}: give one or more positive widths")
        _check(self.num_heads >= 1 and self.embed_dims[-1] % self.num_heads == 0,
               f"part.num_heads={self.num_heads} must divide the last embed_dims width {self.embed_dims[-1]}")
        _check(self.num_layers >= 1 and self.num_cls_layers >= 1, "part needs at least one particle and one class layer")
        _check(0.0 <= self.dropout < 1.0, f"part.dropout={self.dropout} must lie in [0, 1)")


@dataclass(frozen=True)
class DeepSetConfig:
    """The DeepSet baseline (``paper``: GELU MLPs of width 128 and mean pooling, reference C.1)."""

    width: int = 64
    n_constituent_layers: int = 3
    n_jet_layers: int = 3
    dropout: float = 0.0
    use_lifetime: bool = False

    def validate(self) -> None:
        _check(self.width >= 1 and self.n_constituent_layers >= 1 and self.n_jet_layers >= 1,
               f"deepset: width={self.width}, n_constituent_layers={self.n_constituent_layers} and "
               f"n_jet_layers={self.n_jet_layers} must all be at least 1")
        _check(0.0 <= self.dropout < 1.0, f"deepset.dropout={self.dropout} must lie in [0, 1)")


@dataclass(frozen=True)
class FinetuneConfig:
    """Training a tau model on one task with one strategy (the core paper's section 3.2)."""

    task: str = "id"
    strategy: str = "fine_tuning"
    unfreeze_epoch: int = 10  # fine_tuning only: the backbone is frozen for epochs < unfreeze_epoch
    n_gpt_blocks: int = 0  # 0 = all pretrained blocks
    train_size: int = 2000  # training jets
    val_size: int = 2000
    epochs: int = 20
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 1e-2
    min_lr_fraction: float = 0.01  # cosine schedule per batch down to lr * 0.01, as the reference
    focal_gamma: float = 2.0
    focal_weight_background: float = 10.0
    focal_weight_signal: float = 1.0
    huber_delta: float = 1.0
    id_min_jet_pt: float = 20.0  # GeV, reco-jet selection for the id task
    dm_min_jet_pt: float = 5.0  # GeV, for the dm task
    reg_min_jet_pt: float = 0.0  # GeV, for the reg task
    seed: int = 1
    device: str = "auto"

    def validate(self) -> None:
        _check(self.task in TASKS, f"task={self.task!r}; choose from {', '.join(TASKS)}")
        _check(self.strategy in STRATEGIES + BASELINES,
               f"strategy={self.strategy!r}; choose from {', '.join(STRATEGIES + BASELINES)}")
        _check(self.epochs > 0, f"epochs={self.epochs} must be positive")
        _check(0 <= self.unfreeze_epoch, f"unfreeze_epoch={self.unfreeze_epoch} must not be negative")
        _check(self.n_gpt_blocks >= 0, f"n_gpt_blocks={self.n_gpt_blocks} must be >= 0 (0 = all)")
        _check(self.train_size > 0 and self.val_size > 0, "train_size and val_size must be positive")
        _check(self.batch_size > 0 and self.lr > 0, "batch_size and lr must be positive")
        _check(self.seed >= 0, f"seed={self.seed} must not be negative")


@dataclass(frozen=True)
class ScanConfig:
    """Points of the ablation and data-efficiency scans (the core paper's section 3.4 and Fig. 4)."""

    unfreeze_fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # 1.0 = never unfrozen
    train_sizes: tuple[int, ...] = (250, 500, 1000, 2000)
    seeds: tuple[int, ...] = (1, 2, 3)
    ablation_train_size: int = 2000

    def validate(self) -> None:
        _check(all(0.0 <= f <= 1.0 for f in self.unfreeze_fractions),
               f"unfreeze_fractions={self.unfreeze_fractions} must lie in [0, 1] (1 = never unfrozen)")
        _check(bool(self.train_sizes) and all(n > 0 for n in self.train_sizes),
               f"train_sizes={self.train_sizes} must be positive")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds),
               f"seeds={self.seeds} must be distinct (three or more for mean ± std)")
        _check(self.ablation_train_size > 0, "ablation_train_size must be positive")


@dataclass(frozen=True)
class JointConfig:
    """One training of the joint analysis (arXiv:2401.13536; notebook 06, docs/joint.md): an event classifier of
    ``case`` from the jets' ``representation`` with ``strategy``, on ``train_size`` training events.

    ``jet_model`` is ``gpt`` (tauml's backbone + task head) or ``part`` (the ParticleTransformer baseline).  The
    frozen head trains ``epochs_frozen`` epochs with Adam; the end-to-end strategies ``epochs_e2e`` epochs with
    RAdam (betas 0.95, 0.999, eps 1e-5, the paper's inner optimiser), a 5-step warm-up, flat to 70 % of the steps,
    then a linear decay to 0.  The best epoch by validation loss is kept.
    """

    case: str = "zh_tautau"
    representation: str = "s_hlf"
    strategy: str = "frozen"
    jet_model: str = "gpt"
    train_size: int = 1000  # training events
    val_size: int = 200  # validation events (at most: a smaller validation split is used whole)
    seed: int = 1
    epochs_frozen: int = 40
    epochs_e2e: int = 10
    #: events per batch: with the demo's few hundred training events, 128 gave 1-4 optimiser steps per epoch and
    #: the end-to-end models never left their starting point (docs/joint.md); the paper's 256-512 suit 10^6+ events
    batch_size: int = 32
    lr_frozen: float = 1e-3
    lr_e2e: float = 5e-4
    width: int = 64  # phi and rho widths (the paper's HEAD code: 128)
    n_layers: int = 3
    max_constituents_pp: int = 32  # leading constituents per pp jet (JetClass keeps 128)
    device: str = "auto"
    #: Lookahead's k around the end-to-end RAdam (the paper: k = 6, alpha = 0.5); 0 = RAdam alone
    lookahead_k: int = added_setting(0)

    def validate(self) -> None:
        _check(self.case in JOINT_CASES, f"case={self.case!r}; choose from {', '.join(JOINT_CASES)}")
        _check(self.representation in JOINT_REPRESENTATIONS,
               f"representation={self.representation!r}; choose from {', '.join(JOINT_REPRESENTATIONS)}")
        _check(self.strategy in JOINT_STRATEGIES,
               f"strategy={self.strategy!r}; choose from {', '.join(JOINT_STRATEGIES)}")
        _check(self.jet_model in JOINT_JET_MODELS, f"jet_model={self.jet_model!r}; choose from gpt, part")
        _check(not (self.jet_model == "part" and self.strategy == "foundation"),
               "strategy='foundation' starts the jet model from tauml's pretrained GPT backbone: use jet_model='gpt' "
               "(there is no pretrained ParticleTransformer)")
        _check(self.train_size > 0 and self.val_size > 0, "train_size and val_size must be positive (events)")
        _check(self.epochs_frozen > 0 and self.epochs_e2e > 0, "epochs_frozen and epochs_e2e must be positive")
        _check(self.batch_size > 0 and self.lr_frozen > 0 and self.lr_e2e > 0, "batch_size and the lrs must be positive")
        _check(self.width > 0 and self.n_layers > 0, "width and n_layers must be positive")
        _check(self.max_constituents_pp > 0, "max_constituents_pp must be positive")
        _check(self.lookahead_k >= 0, f"lookahead_k={self.lookahead_k} must be 0 (off) or a number of steps")
        _check(self.seed >= 0, f"seed={self.seed} must not be negative")


JOINT_CASES: tuple[str, ...] = ("zh_tautau", "hh4b")
JOINT_REPRESENTATIONS: tuple[str, ...] = ("s_hlf", "v_hlf", "v")
JOINT_STRATEGIES: tuple[str, ...] = ("frozen", "finetuned", "from_scratch", "foundation")
JOINT_JET_MODELS: tuple[str, ...] = ("gpt", "part")

#: The event samples of the joint analysis per preset (``tauml generate --preset NAME --joint``): the demo's take
#: about 2 minutes on one core (docs/joint.md), the paper's are for a cluster.
JOINT_GENERATION: dict[str, GenerationConfig] = {
    "demo": GenerationConfig(events={"ee_zh": 1000, "ee_z": 500, "ee_zz": 500, "ee_qq": 600, "hh4b_m1000": 300,
                                     "hh4b_m2000": 300, "hh4b_m3000": 300, "qcd_multijet": 1200},
                             seed=1, chunk_events=150),
    "paper": GenerationConfig(events={"ee_zh": 400_000, "ee_z": 400_000, "ee_zz": 400_000, "ee_qq": 400_000,
                                      "hh4b_m1000": 300_000, "hh4b_m2000": 300_000, "hh4b_m3000": 300_000,
                                      "qcd_multijet": 3_000_000},
                              seed=1, chunk_events=10_000),
}


# ----------------------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """Everything one study needs, by name."""

    name: str
    generation: GenerationConfig
    features: FeatureConfig
    tokenizer: TokenizerConfig
    gpt: GPTConfig
    pretrain: PretrainConfig
    head: HeadConfig
    finetune: FinetuneConfig
    scan: ScanConfig
    part: ParTBaselineConfig = field(default_factory=ParTBaselineConfig)
    deepset: DeepSetConfig = field(default_factory=DeepSetConfig)
    description: str = ""
    #: Where the data come from: ``"generated"`` (generated on first use), ``"files"`` (the released Fu(tau)ure
    #: and JetClass files `tauml fetch` stored; generating instead happens only when asked for), or a folder, a
    #: file or a glob of files in the released layouts (several joined by ``os.pathsep``); see
    #: :mod:`tauml.data.sources` and :func:`with_data`.
    data: str = "generated"
    #: At most this many pp (JetClass) jets per class are read for the tokenizer and the pretraining, the first
    #: ones in file order (0 = all): what keeps a preset on the released files (100 M jets) to its size.
    pp_jets_per_sample: int = added_setting(0)

    def validate(self) -> Preset:
        problem = _data_source_problem(self.data)
        _check(problem is None, f"data={self.data!r}: {problem}; choose from {', '.join(DATA_SOURCES)} or give a "
                                "folder, file or glob of Fu(tau)ure / JetClass files")
        _check(isinstance(self.pp_jets_per_sample, int) and self.pp_jets_per_sample >= 0,
               f"pp_jets_per_sample={self.pp_jets_per_sample!r} must be a whole number >= 0 (0 = all)")
        for part in (self.generation, self.features, self.tokenizer, self.gpt, self.pretrain, self.head,
                     self.finetune, self.scan, self.part, self.deepset):
            part.validate()
        return self


DEMO = Preset(
    name="demo",
    description="The whole notebook series in minutes on 2 CPU cores within 2 GB (CI runs it).",
    generation=GenerationConfig(
        events={"z": 6000, "zh": 2000, "qq": 6000, "ZJetsToNuNu": 6000, "TTBar": 8000},
        seed=1,
        chunk_events=500,
    ),
    features=FeatureConfig(),
    tokenizer=TokenizerConfig(epochs=20, batch_size=128, train_jets=0),
    gpt=GPTConfig(),
    pretrain=PretrainConfig(epochs=8),
    head=HeadConfig(ffn_ratio=2),
    finetune=FinetuneConfig(val_size=500, batch_size=64, lr=1e-3, huber_delta=0.05),
    scan=ScanConfig(),
)

PAPER = Preset(
    name="paper",
    description=(
        "Settings of the core paper (arXiv:2503.19165) and OmniJet-alpha (arXiv:2403.05618), for GPUs; "
        "use with the real Fu(tau)ure and JetClass files (tauml fetch) or a large generated sample."
    ),
    generation=GenerationConfig(
        events={"z": 2_000_000, "zh": 2_000_000, "qq": 2_000_000, "ZJetsToNuNu": 10_000_000, "TTBar": 10_000_000},
        seed=1,
        chunk_events=10_000,
    ),
    features=FeatureConfig(),
    tokenizer=TokenizerConfig(
        codebook_size=32_000, latent_dim=8, hidden_dim=128, n_blocks=4, n_heads=8, dropout=0.1,
        epochs=100, batch_size=512, lr=1e-3, dead_code_patience=100, train_jets=0, kmeans_iterations=50,
        streaming=True,
    ),
    gpt=GPTConfig(n_layer=3, n_head=8, n_embd=256, ffn_dim=1024, dropout=0.0),
    pretrain=PretrainConfig(epochs=7, batch_size=256, lr=1e-3, warmup_steps=1000, streaming=True),
    head=HeadConfig(n_particle_blocks=2, n_class_blocks=2, n_heads=8, dropout=0.1),
    finetune=FinetuneConfig(epochs=100, batch_size=4096, lr=1e-4, unfreeze_epoch=50, train_size=1_000_000,
                            val_size=540_000),
    scan=ScanConfig(train_sizes=(2_000, 10_000, 100_000, 1_000_000), ablation_train_size=2000),
    part=ParTBaselineConfig(embed_dims=(256, 512, 256), pair_embed_dims=(64, 64, 64), num_heads=8),
    deepset=DeepSetConfig(width=128),
    data="files",
)

MEDIUM = Preset(
    name="medium",
    description=(
        "Between demo and paper: about 1.7 core-hours of generation (or the real files with --data), about 270,000 pp "
        "jets, trainings sized for one GPU or a workstation overnight; measured cost in docs/data.md."
    ),
    generation=GenerationConfig(
        events={"z": 300_000, "zh": 50_000, "qq": 200_000, "ZJetsToNuNu": 250_000, "TTBar": 300_000},
        seed=1,
        chunk_events=5000,
    ),
    features=FeatureConfig(),
    tokenizer=TokenizerConfig(codebook_size=2048, hidden_dim=128, n_blocks=3, n_heads=8, epochs=10, batch_size=512,
                              train_jets=0, streaming=True),
    gpt=GPTConfig(n_layer=3, n_head=8, n_embd=256, ffn_dim=1024),
    pretrain=PretrainConfig(epochs=8, batch_size=256, warmup_steps=500, streaming=True),
    head=HeadConfig(n_heads=8, dropout=0.1),
    finetune=FinetuneConfig(epochs=20, batch_size=1024, lr=5e-4, unfreeze_epoch=10, train_size=100_000,
                            val_size=20_000),
    scan=ScanConfig(train_sizes=(1_000, 10_000, 100_000), ablation_train_size=10_000),
    part=ParTBaselineConfig(embed_dims=(128, 256, 128), pair_embed_dims=(64, 64, 64), num_heads=8),
    deepset=DeepSetConfig(width=128),
    pp_jets_per_sample=150_000,
)

PRESETS: dict[str, Preset] = {"demo": DEMO, "medium": MEDIUM, "paper": PAPER}


def get_preset(name: str | Preset) -> Preset:
    """The preset called ``name`` (``demo``, ``medium`` or ``paper``), validated; a :class:`Preset` is validated and
    returned."""
    if isinstance(name, Preset):
        return name.validate()
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name].validate()


def with_data(preset: str | Preset, data: str | os.PathLike[str] | None) -> str | Preset:
    """``preset`` reading its data from ``data``: ``"generated"``, ``"files"`` (what ``tauml fetch`` stored), or a
    folder, file or glob of Fu(tau)ure / JetClass files in the released layouts (several joined by ``os.pathsep``;
    :mod:`tauml.data.sources`), made absolute (``~`` expanded).  ``None`` returns ``preset`` unchanged, as given (a
    name stays a name), so a notebook's ``DATA = None`` changes nothing.  The result is validated: a path that does
    not exist is a :class:`ConfigError`.

        with_data("demo", "~/data/fuure:~/data/JetClass")   # the demo's sizes on the released files
    """
    if data is None:
        return preset
    data = os.fspath(data)
    if data not in DATA_SOURCES:  # absolute paths: a notebook (run in notebooks/) finds what the shell meant
        data = os.pathsep.join(os.path.abspath(os.path.expanduser(part)) for part in data.split(os.pathsep))
    return replace(get_preset(preset), data=data).validate()


# ----------------------------------------------------------------------------------------------------------
# Hashing and (de)serialisation
# ----------------------------------------------------------------------------------------------------------


def to_dict(config: Any) -> Any:
    """A JSON-ready dict of a (nested) configuration dataclass: every setting."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def identity_dict(config: Any) -> Any:
    """:func:`to_dict` without the :func:`added_setting` settings that still have their default: what names a
    cached result."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: identity_dict(getattr(config, f.name)) for f in dataclasses.fields(config)
                if not (f.metadata.get("added") and getattr(config, f.name) == f.default)}
    if isinstance(config, dict):
        return {str(k): identity_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [identity_dict(v) for v in config]
    return config


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a configuration dataclass from :func:`to_dict` output; unknown keys are refused."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no setting(s) {sorted(unknown)}")
    kwargs = {}
    for key, value in data.items():
        default = getattr(cls(), key) if _has_all_defaults(cls) else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _has_all_defaults(cls: type) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(cls))


def config_hash(*parts: Any, length: int = 12) -> str:
    """A short, stable hexadecimal digest of configuration objects (dataclasses, dicts, strings, numbers)."""
    blob = json.dumps([identity_dict(p) for p in parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
