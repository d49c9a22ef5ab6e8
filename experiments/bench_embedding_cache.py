"""Peak memory of the caption-embedding cache at LAION scale: write a fake shard (default 10k captions x 128 tokens
x 4096, T5-XXL's width, 10.5 GB of bfloat16) and read every row as a DataLoader worker does, each in a fresh process.

    python experiments/bench_embedding_cache.py --rows 10000 --dir /big/tmp         # the issue's shard
    python experiments/bench_embedding_cache.py --rows 1000 --before                # also the old whole-shard load

'write' streams chunks through write_embeddings; 'read' walks the shard with EmbeddingShard and keeps a shuffle
buffer of rows, as the pipeline does; 'before' is what the pipeline did until now (the whole tensor, then float32),
measured only where it fits in memory. Peak RSS is the process's ru_maxrss; the figures print as one table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagen_lit.text.cache import EmbeddingShard, write_embeddings  # noqa: E402


def _lengths(rows: int, tokens: int) -> list[int]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(tokens // 8, tokens + 1, (rows,), generator=g).tolist()


def _write(path: str, rows: int, tokens: int, dim: int, chunk: int) -> dict:
    lengths = _lengths(rows, tokens)

    def chunks():
        for start in range(0, rows, chunk):
            part = lengths[start : start + chunk]
            mask = torch.arange(tokens)[None, :] < torch.tensor(part)[:, None]  # (b, L)
            yield torch.randn(len(part), tokens, dim), mask  # float32, as the encoder returns it

    start = time.perf_counter()
    write_embeddings(path, [f"{i:06d}" for i in range(rows)], lengths, dim, chunks())
    return {"seconds": time.perf_counter() - start}


def _read(path: str, buffer: int) -> dict:
    shard = EmbeddingShard(path)
    kept, total = [], 0
    start = time.perf_counter()
    checksum = 0.0
    for i, key in enumerate(shard.keys):
        row = shard.get(key)
        checksum += float(row.float().sum())  # touch every value, as collate's float32 copy does
        total += row.numel()
        if len(kept) < buffer:
            kept.append(row)
        else:
            kept[i % buffer] = row
    return {"seconds": time.perf_counter() - start, "rows_read": len(shard.keys), "values": total,
            "checksum": checksum}


def _before(path: str) -> dict:
    from safetensors.torch import load_file

    start = time.perf_counter()
    embeds = load_file(path)["embeds"].float()  # the old load_embeddings: whole shard, then float32
    return {"seconds": time.perf_counter() - start, "values": embeds.numel()}


def _peak(target, *args) -> dict:
    """Run target(*args) in a spawned process; its result plus that process's peak RSS in GiB."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target.__name__, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _child(name: str, args: tuple, queue: mp.Queue) -> None:
    result = globals()[name](*args)
    queue.put({**result, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=256, help="captions encoded (and written) at a time")
    parser.add_argument("--buffer", type=int, default=1000, help="rows a worker's shuffle buffer holds")
    parser.add_argument("--before", action="store_true", help="also measure the old whole-shard float32 load")
    parser.add_argument("--dir", default=None, help="where the fake shard goes (needs rows x tokens x dim x 2 bytes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = str(Path(tmp) / "shard.safetensors")
        rows = {"write": _peak(_write, path, args.rows, args.tokens, args.dim, args.chunk)}
        size = Path(path).stat().st_size / 2**30
        rows["read"] = _peak(_read, path, args.buffer)
        if args.before:
            rows["before"] = _peak(_before, path)
    print(f"fake shard: {args.rows} captions x {args.tokens} tokens x {args.dim}, {size:.2f} GiB on disk; "
          f"threads={torch.get_num_threads()}")
    for name, r in rows.items():
        read = f"   {r['values'] * 2 / 2**30:.2f} GiB of bf16 rows read" if "values" in r else ""
        print(f"{name:<7} peak RSS {r['peak_rss_gib']:6.2f} GiB   {r['seconds']:6.1f} s{read}")


if __name__ == "__main__":
    main()
