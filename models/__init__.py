"""Networks (DC-CNN teacher/student, SFT), checkpoints, KD losses and the shared training loop."""
