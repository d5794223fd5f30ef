"""The KD loss zoo for distilling unrolled networks: one small ``nn.Module`` per method, chosen by name from
KD_METHODS.

A loss is built from the student's and the teacher's :class:`models.nets.family.FeatureSpec` (what any registered
network's config provides: ``n_cascades``, ``hidden_channels``, ``border``) and called as
``kd_loss(student_out, student_feats, teacher_out, teacher_feats)``; it returns a scalar. ``*_out``:
(B, 1, H, W) float32 reconstructions. ``*_feats``: what ``network(..., return_features=True)`` returns, one
dict per cascade with ``"hidden"`` (one (B, C_j, H', W') map per ``hidden_channels`` entry; for a DC-CNN the
after-ReLU activations of conv1 .. conv{n-1}), ``"cnn_out"`` (B, 1, H, W) and ``"out"`` (B, 1, H, W). The
models return features; each loss only chooses which ones it compares. Learnable parts
(regressors, connectors, paraphrasers) are submodules of the loss, never of the student, so the student
keeps its 49,285 parameters; the training loop optimises them with the student and stores them under the
checkpoint's ``extra``. Each class declares the teacher hidden layers it reads (``teacher_hidden``) so the
frozen teacher keeps only those. Errors are :class:`KDMethodError` without flag names; the CLI adds them.

Default weights (``default_weight``, the ``--kd-weight`` lambda) make ``lambda * L_KD`` about 0.02, the
size of a fresh student's L1 loss: each class docstring gives the raw value it was set from, measured on a
batch of four 197 x 233 MNI152 brain slices at 4x with a briefly trained D5C5 teacher (300 Adam steps, L1
0.005) and a freshly initialised D3C5 student (L1 0.021).

To add a method: write one ``KDLoss`` subclass below and add one line to ``KD_METHODS``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from models.nets.family import FeatureSpec
from utils import UserError

EPS = 1e-8
# AT, NST, VID, AB and FT compare, per cascade, the teacher's conv3 with the student's conv2 activations
# (0-based indices into "hidden"; past the end: the last map), as the public SFT-KD-Recon code does for AT.
TEACHER_LAYER = 2
STUDENT_LAYER = 1


def layer_channels(spec: FeatureSpec, layer: int) -> int:
    """Channels of hidden map ``layer`` of a cascade (-1 or past the end: the last)."""
    return spec.hidden_channels[min(layer, len(spec.hidden_channels) - 1)]


def _autograd_safe(tensor: torch.Tensor) -> torch.Tensor:
    """Tensors made under ``torch.inference_mode`` cannot be saved for backward; a clone can."""
    return tensor.clone() if tensor.is_inference() else tensor


def _crop(tensor: torch.Tensor, pad: int) -> torch.Tensor:
    """Remove a ``pad``-pixel border: (B, C, H + 2 pad, W + 2 pad) -> (B, C, H, W)."""
    return tensor[..., pad:-pad, pad:-pad] if pad else tensor


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, D) embedding, one row per sample."""
    return tensor.flatten(1)


class KDMethodError(UserError):
    """A KD method that does not exist or does not fit the student / teacher pair."""


class KDLoss(nn.Module):
    """Base class: names the method and picks features; subclasses implement :meth:`compute`.

    Class attributes: ``name`` (registry key), ``description`` (one line for ``--kd-method list``),
    ``default_weight`` (lambda) and ``needs_features`` (False: the loop may pass ``None`` for the feature
    lists and skip capturing them).
    """
    name = ""
    description = ""
    default_weight = 1.0
    needs_features = True
    # The teacher hidden layers compute() reads, as indices into "hidden" (-1: the last; an index past the
    # end means the last, as in hidden()); None: all of them. The frozen teacher keeps only these.
    teacher_hidden: tuple[int, ...] | None = None

    def __init__(self, student_config: FeatureSpec, teacher_config: FeatureSpec):
        super().__init__()
        if self.needs_features and student_config.n_cascades != teacher_config.n_cascades:
            raise KDMethodError(f"{self.name} pairs cascades one to one, but the student has "
                            f"{student_config.n_cascades} and the teacher {teacher_config.n_cascades}")
        self.student_config = student_config
        self.teacher_config = teacher_config

    @property
    def has_parameters(self) -> bool:
        """True when the loss has learnable parts that must be optimised and saved with the student."""
        return any(True for _ in self.parameters())

    def forward(self, student_out: torch.Tensor, student_feats: list[dict] | None,
                teacher_out: torch.Tensor, teacher_feats: list[dict] | None) -> torch.Tensor:
        """Shapes as in the module docstring; teacher tensors may come from ``no_grad`` or ``inference_mode``.

        Returns a float32 scalar. Teacher tensors are never modified.
        """
        teacher_out = _autograd_safe(teacher_out)
        if teacher_feats is not None:
            teacher_feats = [{"hidden": [None if h is None else _autograd_safe(h) for h in f["hidden"]],
                              "cnn_out": _autograd_safe(f["cnn_out"]), "out": _autograd_safe(f["out"])}
                             for f in teacher_feats]
        return self.compute(student_out, student_feats, teacher_out, teacher_feats)

    def compute(self, student_out: torch.Tensor, student_feats: list[dict] | None,
                teacher_out: torch.Tensor, teacher_feats: list[dict] | None) -> torch.Tensor:
        """The method's scalar loss; arguments as in :meth:`forward`, teacher tensors already autograd-safe."""
        raise NotImplementedError

    @staticmethod
    def cnn_outs(feats: list[dict]) -> list[torch.Tensor]:
        """The CNN block output of each cascade: a list of (B, 1, H, W) tensors."""
        return [f["cnn_out"] for f in feats]

    @staticmethod
    def hidden(feats: list[dict], layer: int, config: FeatureSpec) -> list[torch.Tensor]:
        """Per cascade, hidden activation ``layer`` (-1 or past the end: the last one), with the ``border``
        (a DC-CNN's ref_padding) removed so teacher and student maps align: a list of (B, C, H, W) tensors."""
        return [_crop(f["hidden"][min(layer, len(f["hidden"]) - 1)], config.border) for f in feats]

    def keep_teacher_hidden(self) -> set[int] | None:
        """The 0-based teacher hidden layers to keep (see ``teacher_hidden``), for the teacher's forward."""
        if self.teacher_hidden is None:
            return None
        n_hidden = len(self.teacher_config.hidden_channels)
        return {min(i, n_hidden - 1) if i >= 0 else n_hidden + i for i in self.teacher_hidden}

    def paired_hidden(self, student_feats: list[dict], teacher_feats: list[dict]):
        """Per cascade (student conv2, teacher conv3) activations: (B, C_s, H, W), (B, C_t, H, W) pairs."""
        return list(zip(self.hidden(student_feats, STUDENT_LAYER, self.student_config),
                        self.hidden(teacher_feats, TEACHER_LAYER, self.teacher_config)))


def _mean(losses: list[torch.Tensor]) -> torch.Tensor:
    """Average of per-cascade scalar losses."""
    return torch.stack(losses).mean()


class NoKD(KDLoss):
    """No distillation: the loss is exactly 0 with no graph, so training is plain L1 student training.

    default_weight 0: nothing to weigh.
    """
    name = "none"
    description = "no distillation (plain student training)"
    default_weight = 0.0
    needs_features = False

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        return student_out.new_zeros(())


class Imitation(KDLoss):
    """Output KD of KD-MRI (Murugesan et al. 2020): ``|x_S - x_T|_1`` between the final reconstructions.

    default_weight 1.0: KD-MRI's imitation weight; the term is an L1 image distance like the main loss.
    """
    name = "imitation"
    description = "KD-MRI output imitation: L1 between student and teacher reconstructions"
    default_weight = 1.0
    needs_features = False

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        return F.l1_loss(student_out, teacher_out)


class FitNet(KDLoss):
    """FitNets hint learning (Romero et al. 2015) on the layer the SFT-KD-Recon code uses: MSE between the CNN
    outputs (B, 1, H, W) of the middle cascade (index ``n_cascades // 2``) of teacher and student. The public
    ``train_feature_fitnets.py`` instead squares those maps, normalises them over the batch per pixel and takes
    the L1 distance, as its AT does (:class:`PublicAttentionTransfer`).

    Both hints have one channel, so Romero's regressor would be a scalar 1x1 conv and is left out.
    default_weight 0.3: the hint MSE is ~0.065 at init.
    """
    name = "fitnet"
    teacher_hidden = ()
    description = "FitNets hint: MSE between the middle cascade's CNN outputs"
    default_weight = 0.3

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        student_hint = student_feats[len(student_feats) // 2]["cnn_out"]
        teacher_hint = teacher_feats[len(teacher_feats) // 2]["cnn_out"]
        return F.mse_loss(student_hint, teacher_hint)


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Zagoruyko's spatial attention: (B, C, H, W) -> (B, H W), channel mean of squares, L2-normalised."""
    # A channel norm squared equals the channel mean of squares times C, and is one fused pass over the
    # (channels_last) activations, forward and backward, where pow(2).mean(1) materialises the squares first.
    energy = torch.linalg.vector_norm(features, dim=1).square() / features.shape[1]
    return F.normalize(_flat(energy), dim=1, eps=EPS)


class AttentionTransfer(KDLoss):
    """Attention transfer (Zagoruyko & Komodakis 2017) on the layers the SFT-KD-Recon code pairs: per cascade,
    the attention maps of the teacher's conv3 and the student's conv2 activations; the distance is the squared
    L2 distance of the L2-normalised maps per sample, averaged over the batch and the cascades. Only the layer
    pairing is the public code's; its own formula is :class:`PublicAttentionTransfer` (``at-public``).

    RepDistiller averages the squared differences over the H W pixels instead of summing them, which makes
    the loss, and so the right weight, shrink as 1 / (H W); the sum keeps one default for ACDC's 150 x 150,
    MRBrainS' 240 x 240 and the demo's 64 x 64 (it is RepDistiller's value times H W).

    default_weight 0.07: the distance is ~0.28 at init (~6e-6 per pixel at ~200 x 200).
    """
    name = "at"
    teacher_hidden = (TEACHER_LAYER,)
    description = "attention transfer: teacher conv3 vs student conv2 attention maps, every cascade"
    default_weight = 0.07

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        return _mean([(attention_map(s) - attention_map(t)).pow(2).sum(1).mean()
                      for s, t in self.paired_hidden(student_feats, teacher_feats)])


def batch_normalised_energy(features: torch.Tensor) -> torch.Tensor:
    """The public code's attention map: (B, C, H, W) -> (B, H, W), the sum of squares over channels, then each
    pixel's B values L2-normalised over the batch axis (``F.normalize(dim=0)``, its eps 1e-12)."""
    return F.normalize(features.pow(2).sum(1), dim=0)


class PublicAttentionTransfer(KDLoss):
    """Attention transfer as the public SFT-KD-Recon code computes it (``git_cardiac/train_feature.py``): per
    cascade, the teacher's conv3 and the student's conv2 after-ReLU activations become
    :func:`batch_normalised_energy` maps, compared by the mean absolute difference (``F.l1_loss``); mean over
    cascades. The maps are compared as the networks make them, with the ``ref_padding`` border (the public
    networks pad every block input by 5 pixels and their maps include that border), so teacher and student
    must share ``ref_padding``.

    Reproduced: the formula, the layers, the border. Not reproduced here: normalising over the batch makes
    each sample's loss depend on the other slices of its batch (a batch of 1 maps every non-zero pixel to 1);
    the public code trains this loss alone in a first stage and fine-tunes with L1 after it, which is
    ``--feature-epochs`` (see train_student_kd.py), but picks that stage's best student by the validation
    attention loss, where the loop here uses the validation L1.

    default_weight 1: in the public two-stage schedule the first stage is this loss alone (Adam makes its
    scale irrelevant there); it was not tuned for a single stage, where ``--kd-weight`` should be set.
    """
    name = "at-public"
    teacher_hidden = (TEACHER_LAYER,)
    description = ("the public code's attention transfer: channel sum of squares normalised over the batch, L1; "
                   "teacher conv3 vs student conv2")
    default_weight = 1.0

    def __init__(self, student_config: FeatureSpec, teacher_config: FeatureSpec):
        super().__init__(student_config, teacher_config)
        if student_config.border != teacher_config.border:
            raise KDMethodError(f"at-public compares the maps with their padding border, as the public code does, "
                                f"but the student has ref_padding {student_config.border} and the teacher "
                                f"{teacher_config.border}; use a student and teacher built alike")

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        return _mean([F.l1_loss(batch_normalised_energy(s["hidden"][min(STUDENT_LAYER, len(s["hidden"]) - 1)]),
                                batch_normalised_energy(t["hidden"][min(TEACHER_LAYER, len(t["hidden"]) - 1)]))
                      for s, t in zip(student_feats, teacher_feats)])


def _centred_unit(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, D): each sample's embedding minus its mean, L2-normalised (zero stays zero)."""
    flat = _flat(tensor)
    return F.normalize(flat - flat.mean(1, keepdim=True), dim=1, eps=EPS)


def _squared_distances(embedding: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) squared Euclidean distances by the Gram expansion, one matmul (may dip below 0 by
    rounding: callers clamp)."""
    squared = embedding.pow(2).sum(1)
    return squared[:, None] + squared[None, :] - 2 * embedding @ embedding.T


class CorrelationCongruence(KDLoss):
    """Correlation congruence (Peng et al. 2019): per cascade, the B x B correlation matrix of the samples'
    CNN-output embeddings (Gaussian RBF kernel ``exp(-gamma |e_i - e_j|^2)``, computed exactly instead of
    Peng's Taylor expansion, gamma 0.4 as in the paper) must match the teacher's; mean squared difference
    of the matrices (``|C_S - C_T|_F^2 / B^2``), averaged over cascades. Embeddings are centred before
    normalising so the brightness every image shares does not make all pairs look alike. B = 1 gives 0.

    default_weight 2: the loss is ~6e-3 at init (it falls below 1e-3 once the student reconstructs).
    """
    name = "cc"
    teacher_hidden = ()
    description = "correlation congruence: batch RBF correlation of per-cascade CNN outputs"
    default_weight = 2.0
    gamma = 0.4

    def correlation(self, tensor: torch.Tensor) -> torch.Tensor:
        distance2 = _squared_distances(_centred_unit(tensor)).clamp(min=0)
        return torch.exp(-self.gamma * distance2)

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        return _mean([(self.correlation(s) - self.correlation(t)).pow(2).mean()
                      for s, t in zip(self.cnn_outs(student_feats), self.cnn_outs(teacher_feats))])


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Yim's flow matrix: (B, C1, H, W), (B, C2, H, W) -> (B, C1, C2), channel products averaged over H W."""
    return torch.einsum("bihw,bjhw->bij", first, second) / (first.shape[-2] * first.shape[-1])


class FlowOfSolution(KDLoss):
    """FSP (Yim et al. 2017): the flow matrix between consecutive cascades' last hidden activations
    (cascade i and i + 1, both C x H x W, so the matrix is C x C), teacher vs student, MSE averaged over
    the n - 1 cascade pairs. This is METHOD.md's "between consecutive cascades"; the public code's variant
    on the one-channel CNN outputs collapses each matrix to a single number. Needs C_s == C_t.

    default_weight 50: FSP entries are channel products of activations (~1e-2), their MSE ~3e-4 at init.
    """
    name = "fsp"
    teacher_hidden = (-1,)
    description = "FSP: flow matrices between consecutive cascades' last hidden activations"
    default_weight = 50.0

    def __init__(self, student_config: FeatureSpec, teacher_config: FeatureSpec):
        super().__init__(student_config, teacher_config)
        c_s, c_t = layer_channels(student_config, -1), layer_channels(teacher_config, -1)
        if c_s != c_t:
            raise KDMethodError(f"fsp needs equal channels, but the student has {c_s} and the teacher {c_t}")

    def flows(self, feats: list[dict], config: FeatureSpec) -> list[torch.Tensor]:
        last = self.hidden(feats, -1, config)
        return [fsp_matrix(a, b) for a, b in zip(last[:-1], last[1:])]

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        return _mean([F.mse_loss(s, t) for s, t in zip(self.flows(student_feats, self.student_config),
                                                       self.flows(teacher_feats, self.teacher_config))])


def similarity_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """Tung's batch similarity: (B, ...) -> (B, B) Gram matrix of the flattened samples, rows L2-normalised."""
    flat = _flat(tensor)
    return F.normalize(flat @ flat.T, dim=1, eps=EPS)


class SimilarityPreserving(KDLoss):
    """Similarity-preserving KD (Tung & Mori 2019): per cascade, the B x B similarity matrices of the CNN
    outputs, ``|G_S - G_T|_F^2 / B^2``, averaged over cascades.

    default_weight 2: the loss is ~9e-3 at init (~1e-3 once the student reconstructs).
    """
    name = "sp"
    teacher_hidden = ()
    description = "similarity preserving: batch similarity matrices of per-cascade CNN outputs"
    default_weight = 2.0

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        batch = student_out.shape[0]
        return _mean([(similarity_matrix(s) - similarity_matrix(t)).pow(2).sum() / batch ** 2
                      for s, t in zip(self.cnn_outs(student_feats), self.cnn_outs(teacher_feats))])


def _pairwise_distance(embedding: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances; clamped before the root so equal rows have finite gradients."""
    distance = _squared_distances(embedding).clamp(min=EPS).sqrt()
    return distance * (1 - torch.eye(len(embedding), device=embedding.device, dtype=embedding.dtype))


def _relations(embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RKD relations of (B, D) embeddings: distances over their mean (B, B) and triplet angle cosines (B, B, B)."""
    batch = embedding.shape[0]
    distance = _pairwise_distance(embedding)
    distance = distance / (distance.sum() / max(batch * (batch - 1), 1) + EPS)
    directions = F.normalize(embedding[None, :, :] - embedding[:, None, :], dim=2, eps=EPS)
    return distance, directions @ directions.transpose(1, 2)


class RelationalKD(KDLoss):
    """Relational KD (Park et al. 2019): per cascade, on the CNN-output embeddings (B, H W), the distance
    loss (pairwise distances over their mean) plus twice the angle loss (cosines of all triplets), both
    smooth-L1 (the paper's 25 : 50 ratio), averaged over cascades. B = 1 gives 0; angles need B >= 3.

    default_weight 1: distances and cosines are O(1) and normalised; the loss is ~0.02 at init.
    """
    name = "rkd"
    teacher_hidden = ()
    description = "relational KD: distance + angle relations of per-cascade CNN outputs"
    default_weight = 1.0

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        losses = []
        for s, t in zip(self.cnn_outs(student_feats), self.cnn_outs(teacher_feats)):
            (s_dist, s_angle), (t_dist, t_angle) = _relations(_flat(s)), _relations(_flat(t))
            losses.append(F.smooth_l1_loss(s_dist, t_dist) + 2 * F.smooth_l1_loss(s_angle, t_angle))
        return _mean(losses)


def _cosine_probabilities(tensor: torch.Tensor) -> torch.Tensor:
    """PKT's conditional probabilities: (B, ...) -> (B, B), cosine similarities mapped to [0, 1], rows sum to 1."""
    unit = F.normalize(_flat(tensor), dim=1, eps=EPS)
    similarity = (unit @ unit.T + 1) / 2
    return similarity / similarity.sum(1, keepdim=True).clamp(min=EPS)


class ProbabilisticKT(KDLoss):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018): per cascade, KL divergence between the
    teacher's and the student's cosine-similarity distributions over the batch of CNN-output embeddings,
    averaged over cascades. B = 1 gives 0.

    default_weight 50: slices in a batch look alike, so both distributions are near uniform and their KL
    is ~3e-4 at init.
    """
    name = "pkt"
    teacher_hidden = ()
    description = "probabilistic KT: KL between batch cosine-similarity distributions of CNN outputs"
    default_weight = 50.0

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        losses = []
        for s, t in zip(self.cnn_outs(student_feats), self.cnn_outs(teacher_feats)):
            s_prob, t_prob = _cosine_probabilities(s), _cosine_probabilities(t)
            losses.append((t_prob * torch.log((t_prob + EPS) / (s_prob + EPS))).mean())
        return _mean(losses)


def _polynomial_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of ``(a_i . b_j)^2`` over channel pairs: a (B, Ca, D), b (B, Cb, D) -> scalar."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


class NeuronSelectivityTransfer(KDLoss):
    """Neuron selectivity transfer (Huang & Wang 2017): per cascade, the squared MMD with the polynomial
    kernel ``k(x, y) = (x . y)^2`` between the teacher's conv3 and the student's conv2 channels, each channel
    a spatial map L2-normalised over H W; averaged over cascades. Channel counts may differ.

    default_weight 0.3: the MMD of unit-norm maps is ~0.065 at init.
    """
    name = "nst"
    teacher_hidden = (TEACHER_LAYER,)
    description = "neuron selectivity transfer: polynomial MMD of teacher conv3 / student conv2 maps"
    default_weight = 0.3

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        losses = []
        for s, t in self.paired_hidden(student_feats, teacher_feats):
            s_maps, t_maps = F.normalize(s.flatten(2), dim=2, eps=EPS), F.normalize(t.flatten(2), dim=2, eps=EPS)
            losses.append(_polynomial_kernel_mean(t_maps, t_maps) + _polynomial_kernel_mean(s_maps, s_maps)
                          - 2 * _polynomial_kernel_mean(s_maps, t_maps))
        return _mean(losses)


class VariationalInformation(KDLoss):
    """Variational information distillation (Ahn et al. 2019): per cascade, a 1x1-conv regressor
    (C_s -> C_t -> C_t, ReLU between) predicts the teacher's conv3 activations from the student's conv2 as
    the mean of a Gaussian with a learnable per-channel variance (softplus, init 1); the loss is the
    Gaussian negative log-likelihood ``0.5 (mu - t)^2 / var + 0.5 log var`` averaged over elements and
    cascades. It is not 0 for equal features and can go negative as the variances shrink.

    default_weight 1: with variances 1 the loss is ``0.5 mse`` ~0.018 at init; the student's share grows as
    the learned variances fall towards the prediction error.
    """
    name = "vid"
    teacher_hidden = (TEACHER_LAYER,)
    description = "variational information distillation: Gaussian NLL of teacher conv3 given student conv2"
    default_weight = 1.0
    init_variance = 1.0

    def __init__(self, student_config: FeatureSpec, teacher_config: FeatureSpec):
        super().__init__(student_config, teacher_config)
        c_s, c_t = layer_channels(student_config, STUDENT_LAYER), layer_channels(teacher_config, TEACHER_LAYER)
        self.regressors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_s, c_t, 1), nn.ReLU(), nn.Conv2d(c_t, c_t, 1))
            for _ in range(student_config.n_cascades))
        softplus_inverse = math.log(math.expm1(self.init_variance))
        self.variance_logits = nn.Parameter(torch.full((student_config.n_cascades, c_t), softplus_inverse))

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        losses = []
        for index, (s, t) in enumerate(self.paired_hidden(student_feats, teacher_feats)):
            variance = (F.softplus(self.variance_logits[index]) + EPS).view(1, -1, 1, 1)
            mean = self.regressors[index](s)
            losses.append(0.5 * ((mean - t).pow(2) / variance + variance.log()).mean())
        return _mean(losses)


class ActivationBoundaries(KDLoss):
    """Activation-boundary distillation (Heo et al. 2019): per cascade, a connector (1x1 conv + batch norm,
    as in the paper) maps the student's conv2 activations to the teacher's conv3 channels; the hinge-like
    "alternative L2" loss with margin 1 pushes a connector output above +margin where the teacher neuron is
    active (after-ReLU value > 0) and below -margin where it is off. Mean over elements and cascades.

    default_weight 0.01: connector outputs start inside the margin, so the loss is ~1.9 at init.
    """
    name = "ab"
    teacher_hidden = (TEACHER_LAYER,)
    description = "activation boundaries: margin loss on teacher conv3 on/off via student conv2 connectors"
    default_weight = 0.01
    margin = 1.0

    def __init__(self, student_config: FeatureSpec, teacher_config: FeatureSpec):
        super().__init__(student_config, teacher_config)
        c_s, c_t = layer_channels(student_config, STUDENT_LAYER), layer_channels(teacher_config, TEACHER_LAYER)
        self.connectors = nn.ModuleList(nn.Sequential(nn.Conv2d(c_s, c_t, 1, bias=False), nn.BatchNorm2d(c_t))
                                        for _ in range(student_config.n_cascades))

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        losses = []
        for index, (s, t) in enumerate(self.paired_hidden(student_feats, teacher_feats)):
            source, active = self.connectors[index](s), t > 0
            on = (source - self.margin).pow(2) * (active & (source <= self.margin))
            off = (source + self.margin).pow(2) * (~active & (source > -self.margin))
            losses.append((on + off).mean())
        return _mean(losses)


def _factor(tensor: torch.Tensor) -> torch.Tensor:
    """Kim's factor normalisation: (B, K, H, W) -> (B, K H W) unit rows."""
    return F.normalize(_flat(tensor), dim=1, eps=EPS)


class FactorTransfer(KDLoss):
    """Factor transfer (Kim et al. 2018) in one stage: per cascade, a paraphraser (3x3 conv encoder
    C_t -> C_t / 2 with leaky ReLU, 3x3 conv decoder back) autoencodes the teacher's conv3 activations and a
    translator (3x3 conv C_s -> C_t / 2, leaky ReLU) maps the student's conv2 to the same factor space.
    Loss = ``|unit(T(s)) - unit(P(t))|_2^2`` (= 2 - 2 cos, squared L2 instead of the paper's L1 so it does
    not grow with image size) + the paraphraser's reconstruction MSE, averaged over cascades.

    Kim trains the paraphraser first and freezes it. Here it learns alongside the student, but only from
    its reconstruction term: the teacher factor is detached in the transfer term, so the student cannot
    pull it around and the two factors cannot collapse together.
    default_weight 0.01: ``2 - 2 cos`` of unrelated factors is ~1.4 at init (reconstruction ~0.02).
    """
    name = "ft"
    teacher_hidden = (TEACHER_LAYER,)
    description = "factor transfer: student translator matches the teacher paraphraser's factors"
    default_weight = 0.01

    def __init__(self, student_config: FeatureSpec, teacher_config: FeatureSpec):
        super().__init__(student_config, teacher_config)
        c_s, c_t = layer_channels(student_config, STUDENT_LAYER), layer_channels(teacher_config, TEACHER_LAYER)
        c_factor, n = max(1, c_t // 2), student_config.n_cascades
        self.encoders = nn.ModuleList(nn.Sequential(nn.Conv2d(c_t, c_factor, 3, padding=1), nn.LeakyReLU(0.1))
                                      for _ in range(n))
        self.decoders = nn.ModuleList(nn.Conv2d(c_factor, c_t, 3, padding=1) for _ in range(n))
        self.translators = nn.ModuleList(nn.Sequential(nn.Conv2d(c_s, c_factor, 3, padding=1), nn.LeakyReLU(0.1))
                                         for _ in range(n))

    def compute(self, student_out, student_feats, teacher_out, teacher_feats):
        losses = []
        for index, (s, t) in enumerate(self.paired_hidden(student_feats, teacher_feats)):
            teacher_factor = self.encoders[index](t)
            reconstruction = F.mse_loss(self.decoders[index](teacher_factor), t)
            transfer = (_factor(self.translators[index](s)) - _factor(teacher_factor.detach())).pow(2).sum(1).mean()
            losses.append(transfer + reconstruction)
        return _mean(losses)


KD_METHODS: dict[str, type[KDLoss]] = {cls.name: cls for cls in (
    NoKD, Imitation, FitNet, AttentionTransfer, PublicAttentionTransfer, CorrelationCongruence, FlowOfSolution,
    SimilarityPreserving,
    RelationalKD, ProbabilisticKT, NeuronSelectivityTransfer, VariationalInformation, ActivationBoundaries,
    FactorTransfer,
)}


def build_kd_loss(name: str, student_config: FeatureSpec, teacher_config: FeatureSpec) -> KDLoss:
    """The KD loss registered as ``name`` for networks with these feature specs (their configs); an unknown
    name is a :class:`KDMethodError` listing the valid ones."""
    if name not in KD_METHODS:
        raise KDMethodError(f"unknown KD method {name!r}; choose one of: {', '.join(KD_METHODS)}")
    return KD_METHODS[name](student_config, teacher_config)


def describe_methods() -> str:
    """One line per method: name, default weight, description (for ``--kd-method list``)."""
    return "\n".join(f"{name:<10} weight {cls.default_weight:<8g} {cls.description}"
                     for name, cls in KD_METHODS.items())
