"""The trained DeepST network as an :class:`experimat.SavedModel` (config JSON + weights as numpy arrays)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar

import numpy as np

from experimat._saved_model import SavedModel, register_model

from ._model import TrainConfig, build_network


@register_model("deepst.DeepSTModel")
class DeepSTModel(SavedModel):
    """A trained DeepST network: its configuration and its weights (``state``, numpy arrays).

    Returned in ``df.attrs["model"]`` by :func:`spatial_detect_domains_deepst` and
    :func:`integrate_domains_deepst`; inside an experiment it is stored in the project's
    ``models/`` (``expm.load_model("<key_added>.<sample>")`` or ``expm.load_model("<key_added>")``).

    Attributes
    ----------
    config
        ``params`` of the call, ``n_inputs``, ``n_dec_clusters``, ``n_batches``, ``train`` (the
        :class:`TrainConfig` hyper-parameters) and ``method``.
    state
        The network's state dict as numpy arrays.
    """

    format_version: ClassVar[int] = 1

    def __init__(self, config: dict[str, Any], state: dict[str, np.ndarray]) -> None:
        self.config = config
        self.state = state

    @classmethod
    def from_network(cls, net, config: dict[str, Any]) -> DeepSTModel:
        return cls(config, {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()})

    def __repr__(self) -> str:
        return (
            f"DeepSTModel(method={self.config.get('method')!r}, n_inputs={self.config.get('n_inputs')}, "
            f"n_dec_clusters={self.config.get('n_dec_clusters')}, n_batches={self.config.get('n_batches')})"
        )

    def network(self):
        """The torch network with the trained weights (on CPU, in eval mode)."""
        import torch

        names = {f.name for f in fields(TrainConfig)}
        train = {k: tuple(v) if isinstance(v, list) else v for k, v in (self.config.get("train") or {}).items() if k in names}
        head = self.state.get("domain_head.2.bias")  # the adversarial batch head exists only when it was trained
        n_heads = int(np.asarray(head).shape[0]) if head is not None else 0
        net = build_network(torch, int(self.config["n_inputs"]), TrainConfig(**train), n_heads)
        net.cluster_layer = torch.nn.Parameter(torch.zeros(int(self.config["n_dec_clusters"]), net.z_dim))
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state.items()})
        return net.eval()

    def get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return dict(self.config), dict(self.state)

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, Any]) -> DeepSTModel:
        return cls(dict(config), {k: np.asarray(v) for k, v in arrays.items()})
