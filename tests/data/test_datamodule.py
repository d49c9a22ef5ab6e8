"""The datamodule end to end: batches, bad samples, rank/worker splitting, errors, LAION-style shards."""

from __future__ import annotations

import json
import warnings

import lightning
import pytest
import torch

from imagen_lit.data import TextImageDataModule, synthetic_scene
from tests.data.data_testing import FakeEncoder, as_cached, image_bytes, write_tar


def _ready(dm: TextImageDataModule) -> TextImageDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _collect(dm: TextImageDataModule) -> tuple[list[dict], list[str], int]:
    """All batches of one epoch, the keys in them and the summed n_skipped."""
    batches = list(dm.train_dataloader())
    return batches, [k for b in batches for k in b["keys"]], sum(b["n_skipped"] for b in batches)


def test_synthetic_batches(tmp_path, fake_encoder):
    dm = _ready(TextImageDataModule(fake_encoder, data_dir=str(tmp_path), resolution=32, batch_size=5,
                                    num_workers=0, shuffle_buffer=8,
                                    synthetic={"num_scenes": 24, "seed": 0, "samples_per_shard": 8}))
    batches, keys, skipped = _collect(dm)
    assert sorted(keys) == [f"{i:08d}" for i in range(24)] and skipped == 0
    assert keys != sorted(keys)  # shuffled
    for b in batches:
        n = len(b["keys"])
        assert b["images"].shape == (n, 3, 32, 32) and b["images"].dtype == torch.float32
        assert -1.0 <= b["images"].min() and b["images"].max() <= 1.0 and b["images"].std() > 0.05
        emb, mask = b["text_embeds"], b["text_mask"]
        assert emb.dtype == torch.float32 and mask.dtype == torch.bool and emb.shape[:2] == mask.shape
        assert emb.shape[2] == 8 and mask.sum(1).max() == emb.shape[1]  # padded to the longest caption
        assert (emb[~mask] == 0).all()
        for i, key in enumerate(b["keys"]):
            scene = synthetic_scene(0, int(key))
            assert b["captions"][i] == scene.caption and json.loads(b["specs"][i])["caption"] == scene.caption
            assert torch.equal(emb[i, mask[i]], as_cached(scene.caption))  # the right cached row is joined
            assert mask[i].sum() == len(scene.caption.split())
    assert (tmp_path / "synthetic-n24-r32-seed0-sps8-png" / "embeds" / "fake-d8").is_dir()


def test_resize_and_max_text_length(tmp_path, fake_encoder):
    dm = _ready(TextImageDataModule(fake_encoder, data_dir=str(tmp_path), resolution=16, batch_size=4,
                                    num_workers=0, max_text_length=3,
                                    synthetic={"num_scenes": 8, "resolution": 32}))
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (4, 3, 16, 16)
    assert batch["text_embeds"].shape == (4, 3, 8) and batch["text_mask"].all()


def _bad_shards(tmp_path) -> str:
    """Two shards: 6 good samples, one with garbage png bytes, one with no txt."""
    good = [{"__key__": f"g{i}", "png": image_bytes((16, 16)), "txt": f"caption {i}"} for i in range(6)]
    write_tar(tmp_path / "bad-0.tar", good[:3] + [{"__key__": "garbage", "png": b"not a png", "txt": "x y"}])
    write_tar(tmp_path / "bad-1.tar", good[3:] + [{"__key__": "notxt", "png": image_bytes((16, 16))}])
    return str(tmp_path / "bad-{0..1}.tar")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_samples_are_skipped_and_counted(tmp_path, fake_encoder, num_workers):
    pattern = _bad_shards(tmp_path)
    dm = TextImageDataModule(fake_encoder, shards=pattern, resolution=16, batch_size=2,
                             num_workers=num_workers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cache builder's own warning about 'notxt'
        _ready(dm)
    if num_workers == 0:
        with pytest.warns(UserWarning) as record:
            batches, keys, skipped = _collect(dm)
        messages = " ".join(str(w.message) for w in record)
        assert "'garbage'" in messages and "'notxt'" in messages and "bad-0.tar" in messages
    else:
        batches, keys, skipped = _collect(dm)
    assert sorted(keys) == [f"g{i}" for i in range(6)]
    assert skipped == 2


def test_truncated_shard_does_not_stop_training(tmp_path, fake_encoder):
    write_tar(tmp_path / "ok-0.tar", [{"__key__": f"a{i}", "png": image_bytes((16, 16)), "txt": "red"}
                                      for i in range(3)])
    full = write_tar(tmp_path / "ok-1.tar", [{"__key__": f"b{i}", "png": image_bytes((16, 16)), "txt": "blue"}
                                             for i in range(3)])
    data = open(full, "rb").read()
    (tmp_path / "ok-2.tar").write_bytes(b"this is not a tar file at all" * 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = _ready(TextImageDataModule(fake_encoder, shards=str(tmp_path / "ok-*.tar"), resolution=16,
                                        batch_size=2, num_workers=0))
        open(full, "wb").write(data[: len(data) // 2 + 100])  # truncated after its cache was built
        batches, keys, skipped = _collect(dm)
    assert {f"a{i}" for i in range(3)} <= set(keys) and len(keys) < 6 and skipped >= 2  # >= 1 per bad shard


def test_every_key_once_over_ranks_and_workers(tmp_path, fake_encoder, monkeypatch):
    # Even shards: each of the 2 x 2 readers gets one shard of 4, exactly its 2-batch share of the fixed epoch.
    for s in range(4):
        write_tar(tmp_path / f"s-{s}.tar", [{"__key__": f"k{s}{i}", "png": image_bytes((8, 8)), "txt": "a b"}
                                            for i in range(4)])
    seen = []
    for rank in (0, 1):  # webdataset's split_by_node reads RANK / WORLD_SIZE (workers inherit them)
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = _ready(TextImageDataModule(fake_encoder, shards=str(tmp_path / "s-{0..3}.tar"), resolution=8,
                                        batch_size=2, num_workers=2, seed=1))
        _, keys, _ = _collect(dm)
        assert len(keys) == 8  # 2 of the 4 shards
        seen += keys
    assert sorted(seen) == sorted(f"k{s}{i}" for s in range(4) for i in range(4))


def test_argument_and_missing_shard_errors(tmp_path, fake_encoder):
    with pytest.raises(ValueError, match="exactly one"):
        TextImageDataModule(fake_encoder)
    with pytest.raises(ValueError, match="exactly one"):
        TextImageDataModule(fake_encoder, shards="x.tar", synthetic={"num_scenes": 4})
    with pytest.raises(ValueError, match="unknown synthetic"):
        TextImageDataModule(fake_encoder, synthetic={"scenes": 4})
    write_tar(tmp_path / "d-000.tar", [{"__key__": "a", "png": image_bytes((8, 8)), "txt": "a"}])
    pattern = str(tmp_path / "d-{000..001}.tar")  # d-001.tar does not exist
    dm = TextImageDataModule(fake_encoder, shards=pattern)
    for step in (dm.prepare_data, dm.setup):
        with pytest.raises(FileNotFoundError, match="d-001.tar") as info:
            step()
        assert pattern in str(info.value)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        TextImageDataModule(fake_encoder, shards=str(tmp_path / "nothing-here" / "*.tar")).setup()
    dm = TextImageDataModule(fake_encoder, shards=[str(tmp_path / "d-000.tar")])  # a list works too
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        dm.setup()  # no cache yet


def test_laion_style_shard_is_cropped_and_resized(tmp_path, fake_encoder):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (48, 40), (200, 30, 30))
    ImageDraw.Draw(img).rectangle((0, 0, 3, 39), fill=(30, 30, 200))  # blue bands at both far ends,
    ImageDraw.Draw(img).rectangle((44, 0, 47, 39), fill=(30, 30, 200))  # which the centre crop drops
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    write_tar(tmp_path / "00000.tar", [
        {"__key__": "000000000", "jpg": buf.getvalue(), "txt": "a red photo", "json": '{"width": 48}'},
        {"__key__": "000000001", "jpg": buf.getvalue(), "txt": "the same photo"},
    ])
    dm = _ready(TextImageDataModule(fake_encoder, shards=str(tmp_path), resolution=32, batch_size=2,
                                    num_workers=0))
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 3, 32, 32)
    rgb = (batch["images"] + 1) * 127.5  # (B, 3, H, W) in [0, 255]
    inner = rgb[:, :, :, 1:-1]
    assert (inner[:, 0] > 150).all() and (inner[:, 2] < 90).all()  # red everywhere: no blue band survived
    assert sorted(batch["specs"]) == ["", '{"width": 48}']


def test_lightning_fit_sums_skips(tmp_path, fake_encoder):
    class Count(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen, self.skipped = 0, 0

        def training_step(self, batch, _):
            self.seen += batch["images"].shape[0]
            self.skipped += batch["n_skipped"]
            return (self.w - batch["images"].mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Count()
    dm = TextImageDataModule(FakeEncoder(), shards=_bad_shards(tmp_path), resolution=16, batch_size=2,
                             num_workers=0)
    trainer = lightning.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    assert (model.seen, model.skipped) == (6, 2)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_uneven_shards_give_every_rank_the_same_full_batches(tmp_path, fake_encoder, monkeypatch, num_workers):
    sizes = (2, 9, 4)  # 15 samples: a pass deals 11 to one rank and 4 to the other, or 6 and 9
    for s, n in enumerate(sizes):
        write_tar(tmp_path / f"u-{s}.tar", [{"__key__": f"k{s}{i}", "png": image_bytes((8, 8)), "txt": "a b"}
                                            for i in range(n)])
    counts, seen = [], []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = _ready(TextImageDataModule(fake_encoder, shards=str(tmp_path / "u-{0..2}.tar"), resolution=8,
                                        batch_size=2, num_workers=num_workers, seed=3))
        loader = dm.train_dataloader()
        assert len(loader) == dm.batches_per_epoch(2) == 4  # ceil(15 / (2 ranks x 2))
        for _ in range(2):  # two epochs; persistent workers start each one afresh
            batches = list(loader)
            counts.append([len(b["keys"]) for b in batches])
            seen += [k for b in batches for k in b["keys"]]
    assert counts == [[2, 2, 2, 2]] * 4  # equal and full on both ranks, every epoch
    assert len(set(seen)) >= 12  # the passes are dealt round-robin: the ranks read (almost) all the samples


def test_epoch_length_fixes_the_batches_per_epoch(tmp_path, fake_encoder):
    write_tar(tmp_path / "e-0.tar", [{"__key__": f"k{i}", "png": image_bytes((8, 8)), "txt": "a b"} for i in range(3)])
    dm = _ready(TextImageDataModule(fake_encoder, shards=str(tmp_path / "e-0.tar"), resolution=8, batch_size=2,
                                    num_workers=0, epoch_length=5))
    batches, keys, _ = _collect(dm)
    assert [len(b["keys"]) for b in batches] == [2] * 5 and set(keys) == {"k0", "k1", "k2"}  # 10 from 3: cycled
    with pytest.raises(ValueError, match="epoch_length"):
        TextImageDataModule(fake_encoder, shards=str(tmp_path / "e-0.tar"), epoch_length=0)


def test_cycling_over_shards_without_usable_samples_stops_with_an_error(tmp_path, fake_encoder):
    write_tar(tmp_path / "bad.tar", [{"__key__": f"k{i}", "png": image_bytes((8, 8))} for i in range(3)])  # no txt
    dm = TextImageDataModule(fake_encoder, shards=str(tmp_path / "bad.tar"), resolution=8, batch_size=2,
                             num_workers=0, epoch_length=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _ready(dm)
        with pytest.raises(RuntimeError, match="no usable sample"):
            list(dm.train_dataloader())


def test_resume_mid_epoch_continues_the_fixed_epoch_stream(tmp_path, fake_encoder):
    """After 3 of a 5-batch epoch (workers 0, 1, 0), the next batch is worker 1's; a resumed loader starts its round
    at worker 0, so worker 0 must play worker 1 for the stream to continue unchanged."""
    for s, n in enumerate((6, 3, 5)):
        write_tar(tmp_path / f"r-{s}.tar", [{"__key__": f"k{s}{i}", "png": image_bytes((8, 8)), "txt": "a b"}
                                            for i in range(n)])

    def make() -> TextImageDataModule:
        return _ready(TextImageDataModule(fake_encoder, shards=str(tmp_path / "r-{0..2}.tar"), resolution=8,
                                          batch_size=2, num_workers=2, shuffle_buffer=4, seed=5, epoch_length=5))

    straight = [b["keys"] for b in make().train_dataloader()]
    assert len(straight) == 5
    resumed_dm = make()
    resumed_dm.load_state_dict({"ranks": [{"epoch": 0, "consumed": {0: 2, 1: 1}}]})
    assert [b["keys"] for b in resumed_dm.train_dataloader()] == straight[3:]
