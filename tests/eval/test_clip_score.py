"""CLIP score from a local folder: a tiny random CLIP built offline, checked against the definition."""

import pytest
import torch

from imagen_lit.eval.clip_score import ClipScore, projected


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_clip")
    tok = Tokenizer(WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a red circle", "two blue squares above a star"],
                            WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<eos>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                            eos_token="<eos>").save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    config = CLIPConfig(
        text_config={"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "eos_token_id": 2, "pad_token_id": 0},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPModel(config).save_pretrained(folder)
    return folder


def test_clip_score_is_the_clamped_cosine(tiny_clip_dir):
    score = ClipScore(tiny_clip_dir)
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    captions = ["a red circle", "two blue squares", "a star"]
    per_image = score.per_image(images, captions)
    model, tokenizer = score.model, score.tokenizer
    pixels = score.image_processor(images=list(((images + 1) * 127.5).round().to(torch.uint8)), return_tensors="pt")
    img = torch.nn.functional.normalize(projected(model.get_image_features(**pixels)), dim=-1)
    tokens = tokenizer(captions, padding=True, return_tensors="pt")
    txt = torch.nn.functional.normalize(projected(model.get_text_features(**tokens)), dim=-1)
    expected = 100 * (img * txt).sum(-1).clamp(min=0)
    torch.testing.assert_close(per_image, expected)
    assert ((per_image >= 0) & (per_image <= 100)).all()
    assert score(images, captions) == pytest.approx(float(expected.mean()))
    swapped = score.per_image(images, captions[::-1])  # the score depends on which caption goes with which image
    assert not torch.allclose(swapped, per_image)


def test_clip_score_needs_local_weights(tmp_path, tiny_clip_dir):
    with pytest.raises(FileNotFoundError, match="eval.clip_weights"):
        ClipScore(tmp_path / "missing")
    with pytest.raises(ValueError, match="N captions"):
        ClipScore(tiny_clip_dir).per_image(torch.zeros(2, 3, 32, 32), ["one"])
