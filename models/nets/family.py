"""What a network family gives the registry (models/nets/registry.py): its config, its names, its flags, and the
contract its networks keep with checkpoints, SFT and the KD losses.

A family is one module defining a config dataclass, the network it builds and ``FAMILY = Family(...)``.

The config (stored as ``to_dict()`` JSON under a checkpoint's ``arch``) provides:

- ``kind`` (class attribute, the ``arch["kind"]``), ``to_dict()`` (:func:`arch_dict` for a dataclass) and
  ``build()`` (a freshly initialised network, whose ``config`` attribute is this config);
- ``image_channels``: 1 for magnitude images, 2 for complex ones as (real, imaginary) (data/fft.py); a network
  takes and returns images of that many channels;
- the feature interface the KD losses read, :class:`FeatureSpec`: ``n_cascades``, ``hidden_channels`` and
  ``border``.

An unrolled network (one that can be a standalone reconstructor, an SFT teacher or student, or a KD student)
provides, for zero_filled / x (B, C, H, W) float32 (C = ``image_channels``), kspace_under (B, 1, H, W)
complex64 and mask (B or 1, 1, H, W) float32 (the (B, 1, H, W) images below are (B, C, H, W)), and maps: None
(single-coil) or (B, N, H, W) complex64 coil sensitivity maps with kspace_under (B, N, H, W) (multi-coil: C = 2,
DF through data/fft.py's ``data_fidelity(..., maps)``):

- ``cascades``: an ``nn.ModuleList``, one entry per cascade (SFT copies and freezes them one by one);
- ``run_cascade(index, x, kspace_under, mask, maps=None, keep_hidden=None)`` -> ``(out, features)``: cascade ``index``
  (0-based) followed by data fidelity; out (B, 1, H, W) float32; features ``{"hidden": [...], "cnn_out":
  (B, 1, H, W), "out": out}`` with ``hidden`` one (B, hidden_channels[j], H + 2 border, W + 2 border)
  tensor per entry of ``hidden_channels`` (None where ``keep_hidden``, a set of 0-based indices, leaves it
  out, so that without autograd it is freed at once);
- ``forward(zero_filled, kspace_under, mask, maps=None, return_features=False, keep_hidden=None)``: the cascades in
  turn; the reconstruction, and with ``return_features`` also the list of per-cascade feature dicts.

A network whose state between cascades is not its image (E2E-VarNet, models/nets/varnet.py: coil k-space) also
provides ``cascade_maps(kspace_under, mask, maps)`` (the maps its cascades take, e.g. refined by a sensitivity
model), ``initial_state(zero_filled, kspace_under)`` (what cascade 0 starts from) and ``image(state, maps)`` (the
reconstruction of a state); ``run_cascade`` then takes and returns states. :func:`cascade_maps`,
:func:`initial_state` and :func:`state_image` call them, or for an image-domain network give the batch's maps,
zero_filled and the state itself; SFT (models/nets/sft.py) goes through them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol


def arch_dict(config) -> dict:
    """A dataclass config as its checkpoint ``arch`` JSON, ``{"kind": ..., its fields}``. ``image_channels`` is
    written only when it is not 1, so every magnitude network (the paper's, the public imports, checkpoints
    without the entry) has one arch dict, and a missing entry reads as 1."""
    fields = asdict(config)
    if fields.get("image_channels") == 1:
        del fields["image_channels"]
    return {"kind": config.kind, **fields}


class FeatureSpec(Protocol):
    """What a KD loss knows of a network's features (a network's config provides it).

    n_cascades: feature dicts per forward; hidden_channels: the channels of each ``hidden`` map of a
    cascade, all maps at the image's resolution plus ``border`` pixels on every side (a border the KD
    losses crop before comparing two networks' maps).
    """
    n_cascades: int
    hidden_channels: tuple[int, ...]
    border: int


@dataclass(frozen=True)
class Family:
    """One network family in the registry.

    kind: its ``arch["kind"]``; title: what its networks are called (``"DC-CNN"``); config: the config
    dataclass, rebuilt from an arch dict as ``config(**fields)``; describe(arch, detail): a short name from
    an arch dict that may be damaged (read it with ``.get``), e.g. ``"D3C5 (5 cascades x 3 convs)"``;
    presets: the ``--model`` names it offers -> their configs; flags: the generic architecture flags
    (``cascades``, ``depth``, ``width``, ``ref_padding``, ``residual``) it understands -> its config fields;
    parts: for a network made of networks (SFT), the config fields that hold one (each an arch dict of its
    own in checkpoints, named by its own family's ``describe``); bounds: config field -> the largest value a
    checkpoint may declare (far beyond any real network: a larger one is forged or damaged, and building it
    would take minutes or all memory), checked before anything is built; reconstructor: for a network that is
    not itself the reconstruction model (SFT), the part that is (its teacher); None: the network itself.
    """
    kind: str
    title: str
    config: type
    describe: Callable[[dict, bool], str] | None = None
    presets: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, str] = field(default_factory=dict)
    parts: tuple[str, ...] = ()
    bounds: dict[str, int] = field(default_factory=dict)
    reconstructor: Callable[[Any], Any] | None = None


def cascade_maps(network, kspace_under, mask, maps):
    """The maps ``network``'s cascades take: its own ``cascade_maps`` (see the module docstring), else ``maps``
    (None for single-coil data)."""
    own = getattr(network, "cascade_maps", None)
    return maps if own is None else own(kspace_under, mask, maps)


def initial_state(network, zero_filled, kspace_under):
    """What ``network``'s first cascade starts from: its own ``initial_state``, else the zero-filled image."""
    own = getattr(network, "initial_state", None)
    return zero_filled if own is None else own(zero_filled, kspace_under)


def state_image(network, state, maps):
    """The reconstruction of a state of ``network``'s cascades: its own ``image``, else the state (an image)."""
    own = getattr(network, "image", None)
    return state if own is None else own(state, maps)
