"""CLIP score (Imagen Sec. 4.1, Hessel et al. 2021): 100 * max(cos(image, caption), 0) with local CLIP weights only."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


def projected(output: Tensor | object) -> Tensor:
    """The projected embedding from get_image/text_features: a tensor (transformers 4) or pooler_output (5)."""
    return output if isinstance(output, Tensor) else output.pooler_output


class ClipScore(nn.Module):
    """Mean CLIP score of images in [-1, 1] [N, 3, H, W] against their captions; weights from a local folder."""

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu", batch_size: int = 64):
        super().__init__()
        path = Path(weights)
        if not path.is_dir():
            raise FileNotFoundError(f"CLIP weights folder not found: {path} (set eval.clip_weights to a local "
                                    "save_pretrained folder of a CLIP model, e.g. clip-vit-large-patch14)")
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False).to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.image_processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        self.batch_size = batch_size
        self.device = torch.device(device)

    @torch.no_grad()
    def per_image(self, images: Tensor, captions: list[str]) -> Tensor:
        """CLIP score of each image with its own caption, [N]."""
        if images.ndim != 4 or images.shape[1] != 3 or len(images) != len(captions):
            raise ValueError(f"need images [N, 3, H, W] and N captions, got {tuple(images.shape)} and {len(captions)}")
        scores = []
        for i in range(0, len(captions), self.batch_size):
            pixels = ((images[i : i + self.batch_size].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            inputs = self.image_processor(images=list(pixels), return_tensors="pt").to(self.device)
            text = self.tokenizer(captions[i : i + self.batch_size], padding=True, truncation=True,
                                  max_length=self.model.config.text_config.max_position_embeddings,
                                  return_tensors="pt").to(self.device)
            image_emb = nn.functional.normalize(projected(self.model.get_image_features(**inputs)), dim=-1)  # (B, E)
            text_emb = nn.functional.normalize(projected(self.model.get_text_features(**text)), dim=-1)  # (B, E)
            scores.append(100 * (image_emb * text_emb).sum(-1).clamp(min=0).cpu())
        return torch.cat(scores)

    def forward(self, images: Tensor, captions: list[str]) -> float:
        """The mean over the set, as reported in the paper's FID-vs-CLIP curves."""
        return float(self.per_image(images, captions).mean())
