"""Shared by the LC-Net tests: predictors that make varied per-input decisions."""

import torch


def randomise_predictors(m):
    """Untrained predictors execute everything; give them varied decisions to test routing."""
    with torch.no_grad():
        for p in m.predictors:
            p.fc1.weight.normal_(0, 3.0)
            p.fc2.weight.normal_(0, 1.0)
            p.fc2.bias.normal_(0, 0.2)
    return m.eval()
