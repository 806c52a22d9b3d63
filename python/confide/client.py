"""The API a model owner's training code sees inside a data owner's node.

Your entry point (``[code] entry = "train:fit"``) receives a :class:`Context`::

    import confide.client as cc

    def fit(ctx: cc.Context) -> None:
        x, y = ctx.arrays()              # this node's records, decoded by the node
        net = make_net()
        for rnd in ctx.rounds():         # blocks until the node sends the global model
            rnd.load_into(net)           # or rnd.weights() for numpy arrays
            train_locally(net, x, y)     # any code
            rnd.submit(net.state_dict()) # the only output

It runs in a confined process (no sockets, no programs, writes only in its scratch
directory, the working directory). Whatever it submits is checked by the node against the
signed model, which then computes the update, clips it, adds its noise share, encrypts and
signs it. Nothing else it prints or returns leaves the node.

Tensors are named as a ``torch.nn.Module`` whose ``layers`` attribute is an
``nn.Sequential`` of the job's layers would name them (``layers.0.weight``,
``layers.0.bias``, …), in PyTorch's layout: dense weights are ``[out, in]``.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO, Iterator, Mapping, Optional

import numpy as np

_DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1"}


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = stream.read(n - len(out))
        if not chunk:
            raise EOFError("the node closed the channel")
        out += chunk
    return bytes(out)


def _read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<I", _read_exact(stream, 4))
    header: dict[str, Any] = json.loads(_read_exact(stream, n))
    (m,) = struct.unpack("<Q", _read_exact(stream, 8))
    return header, _read_exact(stream, m)


def _write_frame(stream: BinaryIO, header: dict[str, Any], payload: bytes) -> None:
    h = json.dumps(header).encode()
    stream.write(struct.pack("<I", len(h)) + h + struct.pack("<Q", len(payload)) + payload)
    stream.flush()


def _load_safetensors(data: bytes) -> dict[str, "np.ndarray[Any, Any]"]:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        # Copies: writable arrays that torch.from_numpy accepts without a warning.
        out[name] = (
            np.frombuffer(body[start:end], dtype=_DTYPES[meta["dtype"]]).reshape(meta["shape"]).copy()
        )
    return out


def _dump_safetensors(tensors: list[tuple[str, "np.ndarray[Any, Any]"]]) -> bytes:
    header: dict[str, Any] = {}
    offset = 0
    blobs = []
    for name, array in tensors:
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        offset += len(raw)
        blobs.append(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def _as_numpy(value: Any) -> "np.ndarray[Any, Any]":
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


class Round:
    """One federated round: the global model the node sent, and the one submission it
    expects."""

    def __init__(self, ctx: "Context", number: int, weights: dict[str, "np.ndarray[Any, Any]"]) -> None:
        self._ctx = ctx
        self.number = number
        self._weights = weights
        self.submitted = False

    def weights(self) -> dict[str, "np.ndarray[Any, Any]"]:
        """The global model as float32 numpy arrays in PyTorch's layout (dense weights
        ``[out, in]``), by name."""
        out = {}
        for name, _shape, transposed in self._ctx._layout:
            array = self._weights[name]
            out[name] = np.ascontiguousarray(array.T) if transposed else array.copy()
        return out

    def load_into(self, module: Any) -> None:
        """Load the global model into a ``torch.nn.Module`` (``load_state_dict``, strict:
        names and shapes must match the signed model)."""
        import torch  # type: ignore[import-not-found, unused-ignore]

        module.load_state_dict({k: torch.from_numpy(v) for k, v in self.weights().items()})

    def submit(self, state: Mapping[str, Any]) -> None:
        """Submit the trained model: a ``state_dict`` or a mapping of arrays, by the names
        :meth:`weights` gives, in PyTorch's layout. The node checks every name and shape
        against the signed model and refuses the round otherwise."""
        if self.submitted:
            raise RuntimeError(f"round {self.number} was already submitted")
        tensors = []
        for name, _shape, transposed in self._ctx._layout:
            if name not in state:
                # The node decides; it refuses a submission without every tensor.
                continue
            array = _as_numpy(state[name])
            tensors.append((name, np.ascontiguousarray(array.T) if transposed else array))
        extra = [k for k in state if k not in {n for n, _, _ in self._ctx._layout}]
        for name in extra:
            tensors.append((name, _as_numpy(state[name])))
        _write_frame(
            self._ctx._out, {"type": "submit", "round": self.number}, _dump_safetensors(tensors)
        )
        self.submitted = True


class Context:
    """What the node gives your training code: its records, the model's layout and the
    rounds."""

    def __init__(self, hello: dict[str, Any], data: bytes, inp: BinaryIO, out: BinaryIO) -> None:
        self._in = inp
        self._out = out
        self._layout: list[tuple[str, list[int], bool]] = [
            (t["name"], t["shape"], t["torch_transposed"]) for t in hello["layout"]
        ]
        self.classes: int = hello["classes"]
        self.total_rounds: int = hello["rounds"]
        self._data = _load_safetensors(data)
        self._current: Optional[Round] = None

    def arrays(self) -> tuple["np.ndarray[Any, Any]", "np.ndarray[Any, Any]"]:
        """This node's records: ``x`` (float32, ``[rows, …]``, standardised as the job says)
        and ``y`` (int64 class indices, ``[rows]``)."""
        return self._data["x"], self._data["y"]

    @property
    def layout(self) -> list[tuple[str, list[int]]]:
        """Every tensor's name and shape in PyTorch's layout, in the model's order."""
        return [(n, list(reversed(s)) if t else s) for n, s, t in self._layout]

    def rounds(self) -> Iterator[Round]:
        """The rounds the node runs, each after the previous one was submitted; ends when
        the node says the job ended."""
        while True:
            if self._current is not None and not self._current.submitted:
                raise RuntimeError(f"round {self._current.number} ended without submit()")
            header, payload = _read_frame(self._in)
            if header["type"] == "end":
                return
            if header["type"] != "round":
                raise RuntimeError(f"unexpected frame {header['type']!r}")
            self._current = Round(self, int(header["round"]), _load_safetensors(payload))
            yield self._current
