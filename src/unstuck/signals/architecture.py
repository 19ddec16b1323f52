"""What a model's and optimizer's construction says, read once when the Guard is built.

``post_norm_layers`` counts Transformer layers that normalise after the residual (post-LN, the
original Transformer's and BERT's layout), which need a warm-up under Adam (Xiong et al. 2020;
``missing_warmup``). ``beta2_of`` reads an Adam-family optimizer's second-moment decay, which
sets the untuned warm-up length (Ma & Yarats 2021). ``momentum_of`` reads plain SGD's
heavy-ball momentum (the ``add_momentum`` action sets it; the Guard records it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only at use: rules import untuned_warmup_length, analyze has no torch
    import torch

__all__ = [
    "ADAM_BETA2",
    "POST_LN_MODEL_TYPES",
    "beta2_of",
    "momentum_of",
    "post_norm_layers",
    "untuned_warmup_length",
]

ADAM_BETA2 = 0.999  # Kingma & Ba 2015's default, when the optimizer's own β₂ is not known

# Hugging Face ``config.model_type`` values whose layers are post-LN, each checked in the
# transformers source: ``LayerNorm(hidden_states + input_tensor)`` (BERT and its copies: RoBERTa,
# XLM-R, CamemBERT, ELECTRA, ERNIE, data2vec-text, DeBERTa v1/v2, MPNet), ALBERT's
# ``full_layer_layer_norm(ffn_output + attention_output)``, DistilBERT's
# ``sa_layer_norm(attention_output + hidden_states)``, BART's and Marian's
# ``self_attn_layer_norm(residual + hidden_states)``, XLM's ``layer_norm1[i](tensor + attn)``.
# Their pre-LN variants have model types of their own (``roberta-prelayernorm``, ``mbart``,
# ``xlm-roberta-xl``), so an exact match cannot take one for the other.
POST_LN_MODEL_TYPES = frozenset(
    {
        "albert",
        "bart",
        "bert",
        "camembert",
        "data2vec-text",
        "deberta",
        "deberta-v2",
        "distilbert",
        "electra",
        "ernie",
        "marian",
        "mpnet",
        "roberta",
        "xlm",
        "xlm-roberta",
    }
)


def _hf_post_norm_layers(model: torch.nn.Module) -> int:
    """Layers of the outermost Hugging Face model in ``model`` whose type is post-LN."""
    for module in model.modules():
        config = getattr(module, "config", None)
        model_type = getattr(config, "model_type", None)
        if not isinstance(model_type, str):
            continue
        if model_type not in POST_LN_MODEL_TYPES:
            return 0
        layers = getattr(config, "num_hidden_layers", None)  # an alias on every config
        return layers if isinstance(layers, int) and layers > 0 else 1
    return 0


def post_norm_layers(model: torch.nn.Module) -> int:
    """How many of ``model``'s Transformer layers normalise after the residual (post-LN): torch's
    own layers with ``norm_first=False``, and a Hugging Face model of a post-LN type
    (``POST_LN_MODEL_TYPES``). A hand-written post-LN block is not recognised."""
    import torch

    layers = (torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer)
    torch_layers = sum(
        1 for m in model.modules() if isinstance(m, layers) and not getattr(m, "norm_first", False)
    )
    return torch_layers + _hf_post_norm_layers(model)


def beta2_of(optimizer: torch.optim.Optimizer) -> float | None:
    """The second-moment decay β₂ of an Adam-family optimizer (its first group's ``betas``);
    ``None`` for optimizers without one."""
    betas = optimizer.param_groups[0].get("betas") if optimizer.param_groups else None
    if isinstance(betas, (tuple, list)) and len(betas) == 2:
        try:
            return float(betas[1])
        except (TypeError, ValueError):
            return None
    return None


def momentum_of(optimizer: torch.optim.Optimizer) -> float | None:
    """The largest heavy-ball momentum over the groups of a ``torch.optim.SGD``; ``None`` for
    any other optimizer (adaptive ones average their own first moment)."""
    import torch  # here: this module is imported where torch is not (unstuck analyze)

    if not isinstance(optimizer, torch.optim.SGD):
        return None
    return max(float(group.get("momentum", 0.0) or 0.0) for group in optimizer.param_groups)


def untuned_warmup_length(beta2: float | None) -> int:
    """Ma & Yarats 2021's untuned linear warm-up, 2 / (1 − β₂) steps (2,000 at β₂ = 0.999); β₂
    outside [0, 1) or unknown counts as Adam's default."""
    if beta2 is None or not 0.0 <= beta2 < 1.0:
        beta2 = ADAM_BETA2
    return max(2, round(2.0 / (1.0 - beta2)))
