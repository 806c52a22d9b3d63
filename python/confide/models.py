"""Released models: the safetensors file and JSON card that a job's recipients download."""

from __future__ import annotations

import os
from typing import Any, Union

from . import _native

PathLike = Union[str, "os.PathLike[str]"]


class Model:
    """A released model, read and checked against its card by Confide's own loader.

    Tensors are named ``layers.{i}.weight`` and ``layers.{i}.bias`` in parameter order. Dense
    weights are stored ``[d_in, d_out]`` (``y = x·W + b``); conv2d weights are PyTorch's
    ``[out, in, k, k]``; the card's ``weight_layout`` states every convention.
    """

    def __init__(self, card: dict[str, Any], tensors: list[tuple[str, list[int], bytes]]) -> None:
        self.card = card
        self._tensors = tensors

    @classmethod
    def load(cls, path: PathLike) -> "Model":
        """Read ``model.json`` (or a directory holding it) and the ``.safetensors`` file beside
        it. Raises :class:`confide.ModelError` when a file is missing or the weights do not
        match the card."""
        import json

        card, tensors = _native.load_model(os.fspath(path))
        return cls(json.loads(card), tensors)

    @property
    def names(self) -> list[str]:
        """Tensor names in parameter order."""
        return [name for name, _, _ in self._tensors]

    def arrays(self) -> "dict[str, Any]":
        """Every tensor as a float32 numpy array, in Confide's layout."""
        import numpy as np

        return {
            name: np.frombuffer(data, dtype="<f4").reshape(shape).copy()
            for name, shape, data in self._tensors
        }

    def _dense(self) -> set[int]:
        spec = self.card["spec"]
        if spec["kind"] == "layers":
            return {i for i, layer in enumerate(spec["layers"]) if layer["type"] == "dense"}
        # Presets (logistic, softmax, mlp) are dense layers only.
        return set(range(len(self._tensors)))

    def torch_layout(self) -> "dict[str, Any]":
        """The tensors as numpy arrays in PyTorch's layout: dense weights transposed to
        ``torch.nn.Linear``'s ``[out, in]``, everything else as stored."""
        import numpy as np

        dense = self._dense()
        out = {}
        for name, array in self.arrays().items():
            _, index, kind = name.split(".")
            if kind == "weight" and int(index) in dense:
                array = np.ascontiguousarray(array.T)
            out[name] = array
        return out

    def state_dict(self) -> "dict[str, Any]":
        """:meth:`torch_layout` as torch tensors, for ``module.load_state_dict`` of a module
        whose ``layers`` match the card's. Needs torch (``pip install confide[torch]``)."""
        import torch  # type: ignore[import-not-found, unused-ignore]

        return {name: torch.from_numpy(array) for name, array in self.torch_layout().items()}

    def __repr__(self) -> str:
        return f"Model({self.card['spec']['kind']}, {len(self._tensors)} tensors)"
