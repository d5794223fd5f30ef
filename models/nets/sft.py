"""The student-friendly teacher (SFT): teacher cascades T1..T5 trained jointly with student branches.

Branch j (j = 1..4) starts from the teacher's intermediate output x_j and runs the shared student cascades
S_{j+1}..S_5, each followed by DF. S1 is never used here; it stays at its initialisation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from models.nets.dccnn import STUDENT, TEACHER
from models.nets.family import Family, cascade_maps, initial_state, state_image


@dataclass(frozen=True)
class SFTConfig:
    """An SFT network: the configs of its teacher and its student, any registered unrolled networks (see
    models/nets/family.py) with the same number of cascades."""
    teacher: Any = TEACHER
    student: Any = STUDENT
    kind: ClassVar[str] = "sft"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "teacher": self.teacher.to_dict(), "student": self.student.to_dict()}

    def build(self) -> "SFTNet":
        return SFTNet(self.teacher, self.student)

    @property
    def image_channels(self) -> int:
        """The image channels of both networks (1 magnitude, 2 complex; :class:`SFTNet` checks they agree)."""
        return self.teacher.image_channels


class SFTNet(nn.Module):
    """Teacher (``self.teacher``, D5C5 by default) and student (``self.student``, D3C5) in one module."""

    def __init__(self, teacher_config=TEACHER, student_config=STUDENT):
        super().__init__()
        if teacher_config.n_cascades != student_config.n_cascades:
            raise ValueError("SFT needs as many student cascades as teacher cascades")
        if teacher_config.image_channels != student_config.image_channels:
            raise ValueError("SFT needs a teacher and a student of one image type (image_channels)")
        self.config = SFTConfig(teacher_config, student_config)
        self.teacher = teacher_config.build()
        self.student = student_config.build()
        # S1 is never in the SFT graph: freezing it keeps optimizers and DDP from expecting a gradient.
        self.student.cascades[0].requires_grad_(False)

    def arch(self) -> dict:
        return self.config.to_dict()

    def forward(self, zero_filled: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor,
                maps: torch.Tensor | None = None, branches: bool = True, batch_branches: bool = False):
        """zero_filled: (B, 1, H, W) float32; kspace_under: (B, 1, H, W) complex64; mask: (B, 1, H, W); maps: None,
        or (B, N, H, W) complex64 for multi-coil data (kspace_under (B, N, H, W), images 2 channels).

        Returns the teacher output (B, 1, H, W) and, with ``branches``, the list of the four branch outputs
        [x^S_1, ..., x^S_4], each (B, 1, H, W) float32.

        Each branch runs at the caller's batch size; ``batch_branches`` runs the branches that share a
        student cascade as one batch instead (B, 2B, 3B, 4B: fewer, larger kernels). Which is faster on
        which device is measured by scripts/benchmark.py and recorded in models/training/speed.py.
        """
        intermediate = self.teacher_states(zero_filled, kspace_under, mask, maps)
        x = state_image(self.teacher, intermediate[-1], maps)
        if not branches:
            return x
        student_maps = cascade_maps(self.student, kspace_under, mask, maps)
        if batch_branches:
            return x, [state_image(self.student, y, maps)
                       for y in self._batched_branches(intermediate, kspace_under, mask, student_maps)]
        return x, [self.branch(start, intermediate[start - 1], kspace_under, mask, maps, student_maps)
                   for start in range(1, len(intermediate))]

    def teacher_states(self, zero_filled: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor,
                       maps: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The teacher's states after each cascade, x_1..x_5 (inputs as in :meth:`forward`): each (B, 1, H, W)
        float32 for an image-domain teacher, whose last is its reconstruction; (B, N, H, W) complex64 coil k-space
        for a VarNet (models/nets/family.py's ``state_image`` makes the reconstruction)."""
        teacher_maps = cascade_maps(self.teacher, kspace_under, mask, maps)
        x, states = initial_state(self.teacher, zero_filled, kspace_under), []
        for index in range(len(self.teacher.cascades)):
            x, _ = self.teacher.run_cascade(index, x, kspace_under, mask, teacher_maps)
            states.append(x)
        return states

    def branch(self, start: int, x_start: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor,
               maps: torch.Tensor | None = None, student_maps: torch.Tensor | None = None) -> torch.Tensor:
        """Student branch ``start`` (1..4): S_{start+1}..S_5 run on the teacher's state x_start (see
        :meth:`teacher_states`). Returns the branch's reconstruction (B, 1, H, W) float32. student_maps: the maps
        the student's cascades take (models/nets/family.py's ``cascade_maps``), computed here when None."""
        if student_maps is None:
            student_maps = cascade_maps(self.student, kspace_under, mask, maps)
        y = x_start
        for index in range(start, len(self.student.cascades)):
            y, _ = self.student.run_cascade(index, y, kspace_under, mask, student_maps)
        return state_image(self.student, y, maps)

    def _batched_branches(self, intermediate: list[torch.Tensor], kspace_under: torch.Tensor,
                          mask: torch.Tensor, maps: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Branch outputs of :meth:`forward` with one call per student cascade: cascade S_{i+1} runs on the
        states of branches 1..i stacked along the batch. intermediate: the teacher states x_1..x_5, each
        (B, 1, H, W); kspace_under (B, 1, H, W); mask (B or 1, 1, H, W); maps: the student's cascade maps.
        Returns the branches' final states [x^S_1, ..., x^S_4] (images for an image-domain student)."""
        batch = intermediate[0].shape[0]
        y = None
        for index in range(1, len(self.teacher.cascades)):
            # Branch `index` joins here, starting from the teacher's x_index, behind the branches already running.
            y = intermediate[index - 1] if y is None else torch.cat([y, intermediate[index - 1]])
            branch_mask = mask if mask.shape[0] == 1 else mask.repeat(index, 1, 1, 1)
            branch_maps = None if maps is None else maps.repeat(index, 1, 1, 1)
            y, _ = self.student.run_cascade(index, y, kspace_under.repeat(index, 1, 1, 1), branch_mask, branch_maps)
        return list(y.split(batch))

    def teacher_and_branch1(self, zero_filled: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor,
                            maps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher output and branch 1 (S2..S5 on x_1) only, each (B, 1, H, W) float32: what validation
        logs, at 4 of the 10 student cascades of :meth:`forward`."""
        teacher_maps = cascade_maps(self.teacher, kspace_under, mask, maps)
        student_maps = cascade_maps(self.student, kspace_under, mask, maps)
        x, _ = self.teacher.run_cascade(0, initial_state(self.teacher, zero_filled, kspace_under), kspace_under,
                                        mask, teacher_maps)
        y = x
        for index in range(1, len(self.teacher.cascades)):
            x, _ = self.teacher.run_cascade(index, x, kspace_under, mask, teacher_maps)
            y, _ = self.student.run_cascade(index, y, kspace_under, mask, student_maps)
        return state_image(self.teacher, x, maps), state_image(self.student, y, maps)


def sft_forward_backward(model: SFTNet, zero_filled: torch.Tensor, kspace_under: torch.Tensor,
                         mask: torch.Tensor, target: torch.Tensor, student_rec_weight: float = 1.0,
                         imitation_weight: float = 1.0, maps: torch.Tensor | None = None):
    """``sft_loss(*model(...), ...).backward()`` with one student branch's activations alive at a time.

    Inputs (maps included) as in :meth:`SFTNet.forward`, target (B, 1, H, W) float32. Accumulates the same gradients (up to
    float32 summation order) into the parameters and returns the detached loss and terms of :func:`sft_loss`.

    The graph is cut at the branch inputs x_j and at the teacher output; each branch runs forward and
    backward alone, leaving gradients on those cut points, and a last backward carries them through the
    teacher. Peak memory drops by the activations of three branches (~350 MB at 240 x 240, batch 4).
    """
    intermediate = model.teacher_states(zero_filled, kspace_under, mask, maps)
    n_branches = len(intermediate) - 1
    teacher_out = state_image(model.teacher, intermediate[-1], maps)
    teacher_cut = teacher_out.detach().requires_grad_()
    starts = [t.detach().requires_grad_() for t in intermediate[:-1]]
    # Maps a student computes (a VarNet's sensitivity model) feed every branch: cut there too, carried below.
    student_maps = cascade_maps(model.student, kspace_under, mask, maps)
    maps_cut = student_maps
    if student_maps is not None and student_maps.requires_grad:
        maps_cut = student_maps.detach().requires_grad_()
    branch_losses, imitation_losses = [], []
    for start, x_start in enumerate(starts, 1):
        y = model.branch(start, x_start, kspace_under, mask, maps, maps_cut)
        loss_branch, loss_imitation = F.l1_loss(y, target), F.l1_loss(y, teacher_cut)
        (student_rec_weight * loss_branch + imitation_weight * loss_imitation).div(n_branches).backward()
        branch_losses.append(loss_branch.detach())
        imitation_losses.append(loss_imitation.detach())
    loss_teacher = F.l1_loss(teacher_out, target)
    # d(total)/d(teacher) = dL_T/d(teacher) + the gradients the branches left on the cut points.
    carried = sum(_inner(t, cut.grad) for t, cut in zip(intermediate[:-1] + [teacher_out], starts + [teacher_cut]))
    if maps_cut is not student_maps:
        carried = carried + _inner(student_maps, maps_cut.grad)
    (loss_teacher + carried).backward()
    loss_student, loss_imit = torch.stack(branch_losses).mean(), torch.stack(imitation_losses).mean()
    total = loss_teacher.detach() + student_rec_weight * loss_student + imitation_weight * loss_imit
    terms = {"teacher": loss_teacher.detach(), "student": loss_student, "imitation": loss_imit}
    terms.update({f"student_branch{j + 1}": l for j, l in enumerate(branch_losses)})
    return total, terms


def _inner(tensor: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``sum(tensor * grad)`` for real tensors, ``sum(Re(conj(grad) * tensor))`` for complex ones: a scalar
    whose gradient with respect to ``tensor`` is ``grad`` (PyTorch's convention for complex tensors)."""
    if tensor.is_complex():
        return (torch.view_as_real(tensor) * torch.view_as_real(grad)).sum()
    return (tensor * grad).sum()


def sft_loss(teacher_out: torch.Tensor, branch_outs: list[torch.Tensor], target: torch.Tensor,
             student_rec_weight: float = 1.0, imitation_weight: float = 1.0):
    """``L_rec^T + w_s * mean_j |x^S_j - x|_1 + w_i * mean_j |x^S_j - x^T|_1`` (all mean L1).

    teacher_out, target and each branch output: (B, 1, H, W) float32. The imitation term is not
    detached on either side, so its gradient reaches the teacher: that is what makes it student-friendly.
    Returns the scalar loss and a dict of detached terms for logging.
    """
    loss_teacher = F.l1_loss(teacher_out, target)
    loss_branches = [F.l1_loss(b, target) for b in branch_outs]
    loss_imitation = [F.l1_loss(b, teacher_out) for b in branch_outs]
    loss_student = torch.stack(loss_branches).mean()
    loss_imit = torch.stack(loss_imitation).mean()
    total = loss_teacher + student_rec_weight * loss_student + imitation_weight * loss_imit
    terms = {"teacher": loss_teacher, "student": loss_student, "imitation": loss_imit}
    terms.update({f"student_branch{j + 1}": l for j, l in enumerate(loss_branches)})
    return total, {k: v.detach() for k, v in terms.items()}


def student_from_blocks(source: nn.Module, fresh: nn.Module) -> nn.Module:
    """Student for step 2: cascades S2..S5 copied from the trained student ``source`` (an SFT network's
    ``.student``, or a standalone student), S1 taken from the freshly initialised ``fresh`` (same architecture,
    any unrolled network). Neither argument is modified.

    S1 never ran during SFT training, so its weights are just the initial draw; the paper re-initialises it
    and lets KD train it from scratch together with the copied cascades. Parts outside the cascades (a
    VarNet's sensitivity model, which the SFT branches trained) are copied too. Every parameter trains except
    those a freshly built network freezes itself (a VarNet's first DC weight)."""
    student = copy.deepcopy(fresh)
    for index in range(1, len(student.cascades)):
        student.cascades[index].load_state_dict(source.cascades[index].state_dict())
    for name, part in student.named_children():
        if name != "cascades":
            part.load_state_dict(getattr(source, name).state_dict())
    with torch.device("meta"):  # allocates nothing and draws no random numbers
        as_built = student.config.build()
    for copied, built in zip(student.parameters(), as_built.parameters()):
        copied.requires_grad_(built.requires_grad)
    return student


FAMILY = Family(kind=SFTConfig.kind, title="SFT network", config=SFTConfig, parts=("teacher", "student"),
                reconstructor=lambda model: model.teacher)
