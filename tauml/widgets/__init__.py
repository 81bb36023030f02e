"""Interactive panels for the notebooks, built here and tested headless (``.value = ...``, ``.click()``).

Each builder returns an ipywidgets container whose controls are attributes, so that a test — or a teacher
preparing a class — can drive it from code.
"""

from tauml.widgets.backbone import BackbonePanel, backbone_panel
from tauml.widgets.embeddings import EmbeddingExplorer, embedding_explorer
from tauml.widgets.finetuning import FinetunePanel, finetune_panel
from tauml.widgets.generation import GenerationPanel, generation_panel
from tauml.widgets.joint import JointPanel, joint_panel
from tauml.widgets.scans import ScanExplorer, scan_explorer
from tauml.widgets.tokenization import TokenizationExplorer, tokenization_explorer

__all__ = [
    "BackbonePanel",
    "EmbeddingExplorer",
    "FinetunePanel",
    "GenerationPanel",
    "JointPanel",
    "ScanExplorer",
    "TokenizationExplorer",
    "backbone_panel",
    "embedding_explorer",
    "finetune_panel",
    "generation_panel",
    "joint_panel",
    "scan_explorer",
    "tokenization_explorer",
]
