"""The partial-OT assignment of a MADPOT model as an image: for every patch, which prompt took its
mass (colour: blues/greens for the K normal prompts, reds/oranges for the K abnormal ones) and how
much of the patch was transported (brightness; patches that sent less than ``untransported`` of
their mass are grey) -- what no anchor or prototype view shows."""

from __future__ import annotations

import colorsys

import numpy as np
import torch
import torch.nn.functional as F

UNTRANSPORTED = 0.5
GREY = (0.35, 0.35, 0.35)


def prompt_colours(n_prompts: int) -> np.ndarray:
    """``[2K, 3]`` RGB in [0, 1]: K normal hues in 0.35-0.65 (green-blue), K abnormal in 0.0-0.12 (red-orange)."""
    colours = []
    for low, high in ((0.35, 0.65), (0.0, 0.12)):
        for k in range(n_prompts):
            hue = low + (high - low) * (k / max(1, n_prompts - 1))
            colours.append(colorsys.hsv_to_rgb(hue, 0.85, 1.0))
    return np.asarray(colours)


def assignment_image(
    prompt: torch.Tensor, mass: torch.Tensor, grid: tuple[int, int], n_prompts: int, size: int,
    untransported: float = UNTRANSPORTED,
) -> np.ndarray:
    """``prompt`` / ``mass`` ``[M]`` of one image (from :meth:`MadpotModel.assignments`) -> ``[size, size, 3]`` uint8."""
    colours = prompt_colours(n_prompts)[prompt.numpy()]
    sent = mass.numpy().clip(0.0, 1.0)[:, None]
    rgb = np.where(sent >= untransported, colours * (0.4 + 0.6 * sent), np.asarray(GREY))
    cells = torch.from_numpy(rgb.reshape(*grid, 3)).permute(2, 0, 1)[None].float()
    up = F.interpolate(cells, size=(size, size), mode="nearest")[0].permute(1, 2, 0).numpy()
    return np.round(up * 255).astype(np.uint8)


def assignment_summary(prompt: torch.Tensor, mass: torch.Tensor, n_prompts: int,
                       untransported: float = UNTRANSPORTED) -> str:
    """One line: how many patches each prompt took and how many stayed untransported."""
    taken = np.bincount(prompt.numpy()[mass.numpy() >= untransported], minlength=2 * n_prompts)
    normal = " ".join(str(int(n)) for n in taken[:n_prompts])
    abnormal = " ".join(str(int(n)) for n in taken[n_prompts:])
    left = int((mass.numpy() < untransported).sum())
    return f"patches per prompt: normal [{normal}], abnormal [{abnormal}]; untransported (< {untransported:g} of their mass): {left}"
