"""Average Drop and Increase in Confidence (Chattopadhay et al., WACV 2018; METHODS.md section 4).

The explanation map E = input * saliency (the normalised input times the input-size map in
[0, 1]) is classified; O is the score of the class predicted on the clean image, Y its score
on the clean image. Per image: drop = max(0, Y - O) / Y (Average Drop is its mean, in %), and
increase = [O > Y] (Increase in Confidence is its mean, in %).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fdpipe.evaluation.curves import Classifier, Score, class_scores
from fdpipe.kernels.precision import ieee_fp32
from torch import Tensor


@dataclass
class ConfidenceChange:
    clean: Tensor  # (B,) Y: the score on the clean image
    explained: Tensor  # (B, M) O: the score on input * map

    @property
    def drop(self) -> Tensor:
        """(B, M) max(0, Y - O) / Y in %."""
        return (self.clean[:, None] - self.explained).clamp(min=0) / self.clean[:, None] * 100

    @property
    def increase(self) -> Tensor:
        """(B, M) 100 where O > Y, else 0: its mean is the Increase in Confidence in %."""
        return (self.explained > self.clean[:, None]).float() * 100


@torch.no_grad()
def confidence_change(
    classifier: Classifier,
    images: Tensor,
    saliency: Tensor,
    clean_logits: Tensor,
    score: Score = "probability",
    batch_size: int = 64,
) -> ConfidenceChange:
    """For ``images`` (B, C, H, W), input-size maps (B, M, H, W) and the clean logits."""
    batch, maps = saliency.shape[:2]
    classes = clean_logits.argmax(1)
    masked = (images[:, None] * saliency.to(images)[:, :, None]).flatten(0, 1)
    of_image = classes.repeat_interleave(maps)
    with ieee_fp32():
        explained = torch.cat(
            [
                class_scores(classifier(part), of_image[i : i + len(part)], score)
                for i, part in zip(
                    range(0, len(masked), batch_size), masked.split(batch_size), strict=True
                )
            ]
        )
    return ConfidenceChange(class_scores(clean_logits, classes, score), explained.view(batch, maps))
