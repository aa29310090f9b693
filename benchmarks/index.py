"""FAISS index benchmark: flat vs IVF-flat vs IVF-PQ vs numpy brute force, and the `auto` threshold.

Data: N unit vectors in D=512 from a mixture of `--clusters` normalised Gaussian clusters with
a shared mean direction (like CLIP embeddings: random pairs have cosine ~0.4, same-cluster
pairs ~0.7) and uneven cluster sizes. Queries are fresh draws from the same mixture.

For every method: build time, index bytes (written file size), RSS delta of the build,
latency of `--queries` queries at k=`--k`, and recall@k against the numpy brute-force top-k.
Then, at a few sizes, the `auto` threshold: flat vs IVF for build + 10 rounds of 1k queries.

    python -m benchmarks.index --n 100000            # development size
    python -m benchmarks.index                       # full size: 1,000,000 (~2 GB of vectors)
`ivf-pqM+rerank` re-ranks RERANK_FACTOR * k PQ candidates exactly from float16 copies of the
vectors (held in memory here, read from the shards in alkit; not counted in index MiB).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running a script puts benchmarks/ first on sys.path; put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import gc
import os
import tempfile
import time

import numpy as np

from alkit.retrieval.index import apply_search_settings, build_index, search  # noqa: E402
from alkit.retrieval.settings import IndexSettings, default_nlist  # noqa: E402


def clustered_unit_vectors(n: int, dim: int, centres: np.ndarray, weights: np.ndarray, spreads: np.ndarray,
                           mean_direction: np.ndarray, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """(n, dim) float32 unit vectors: normalise(0.9 m + c_j + s_j e / sqrt(D)), j ~ weights."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        cluster = rng.choice(len(centres), size=size, p=weights)
        noise = rng.standard_normal((size, dim), dtype=np.float32) / np.sqrt(dim)
        rows = 0.9 * mean_direction + centres[cluster] + spreads[cluster, None] * noise
        out[start:start + size] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def make_data(n: int, num_queries: int, dim: int, num_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    mean_direction = rng.standard_normal(dim).astype(np.float32)
    mean_direction /= np.linalg.norm(mean_direction)
    weights = rng.gamma(2.0, size=num_clusters)
    weights /= weights.sum()
    spreads = rng.uniform(0.5, 0.9, size=num_clusters).astype(np.float32)
    base = clustered_unit_vectors(n, dim, centres, weights, spreads, mean_direction, rng)
    queries = clustered_unit_vectors(num_queries, dim, centres, weights, spreads, mean_direction, rng)
    return base, queries


def numpy_top_k(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 32_768) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product: chunked matmul + argpartition, merged; (Q, k) scores, positions."""
    best_scores, best_ids = [], []
    for start in range(0, len(base), chunk):
        scores = queries @ base[start:start + chunk].T  # (Q, chunk)
        kk = min(k, scores.shape[1])
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        best_scores.append(np.take_along_axis(scores, top, axis=1))
        best_ids.append(top + start)
    scores, ids = np.concatenate(best_scores, axis=1), np.concatenate(best_ids, axis=1)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    scores, ids = np.take_along_axis(scores, top, axis=1), np.take_along_axis(ids, top, axis=1)
    order = np.argsort(-scores, axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth))
    return hits / truth.size


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def index_file_bytes(faiss_index) -> int:
    import faiss

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.faiss")
        faiss.write_index(faiss_index, path)
        return os.path.getsize(path)


def timed(fn, *args):
    """(result, CPU seconds of this process). The shared box runs other jobs, so wall time
    mostly measures waiting; with --threads 1, CPU time is what an idle core would take."""
    start = time.process_time()
    result = fn(*args)
    return result, time.process_time() - start


def row(name, build_s, index_bytes, rss_delta, query_s, recall) -> str:
    build = "-" if build_s is None else f"{build_s:.1f}"
    return (f"| {name:<26} | {build:>8} | {index_bytes / 2**20:>9.0f} | {rss_delta / 2**20:>8.0f} "
            f"| {query_s:>8.3f} | {recall:>7.3f} |")


def compare_methods(base, queries, k, nlist, nprobes, pq_m, with_hnsw) -> None:
    ids = np.arange(len(base), dtype=np.int64)
    (truth_scores, truth), brute_s = timed(numpy_top_k, base, queries, k)
    print(f"\n## N={len(base):,} D={base.shape[1]} queries={len(queries)} k={k} nlist={nlist}\n")
    print("| method                     | build s  | index MiB | RSS +MiB | query s  | recall@k |")
    print("|----------------------------|---------:|----------:|---------:|---------:|--------:|")
    print(row("numpy brute force", None, base.nbytes, 0, brute_s, 1.0))
    variants = [("flat", IndexSettings(kind="flat"), [None])]
    variants.append(("ivf-flat", IndexSettings(kind="ivf", nlist=nlist), nprobes))
    if pq_m:
        variants.append((f"ivf-pq{pq_m}", IndexSettings(kind="ivf", nlist=nlist, pq_m=pq_m), nprobes))
        variants.append((f"ivf-pq{pq_m}+rerank", IndexSettings(kind="ivf", nlist=nlist, pq_m=pq_m), nprobes))
    stored = base.astype(np.float16)  # what the shards on disk hold; re-ranking reads these rows
    if with_hnsw:
        variants.append(("hnsw32", IndexSettings(kind="hnsw", hnsw_m=32), ["ef64", "ef128", "ef256"]))
    for name, settings, sweep in variants:
        gc.collect()
        rss_before = rss_bytes()
        index, build_s = timed(build_index, ids, base, settings)
        rss_delta = rss_bytes() - rss_before
        if name.endswith("+rerank"):  # exact re-ranking of RERANK_FACTOR * k PQ candidates
            index.reranker = lambda wanted: stored[wanted].astype(np.float32)
        size = index_file_bytes(index.index)
        for point in sweep:
            label = name
            if isinstance(point, int):
                apply_search_settings(index, IndexSettings(nprobe=point))
                label = f"{name} nprobe={point}"
            elif isinstance(point, str):
                apply_search_settings(index, IndexSettings(ef_search=int(point[2:])))
                label = f"{name} efSearch={point[2:]}"
            (_, found), query_s = timed(search, index, queries, k)
            print(row(label, build_s, size, rss_delta, query_s, recall_at_k(found, truth)))
        del index
    uncentred_ivf_row(base, queries, truth, k, nlist, nprobe=16)


def uncentred_ivf_row(base, queries, truth, k, nlist, nprobe) -> None:
    """Plain FAISS IVF-flat on the raw vectors: what alkit's centring (x - mean) is compared to."""
    import faiss

    def build():
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(base.shape[1]), base.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.max_points_per_centroid = 40
        sample = np.random.default_rng(0).choice(len(base), min(len(base), 40 * nlist), replace=False)
        ivf.train(base[np.sort(sample)])
        ivf.add(base)
        ivf.nprobe = nprobe
        return ivf

    ivf, build_s = timed(build)
    (_, found), query_s = timed(ivf.search, queries, k)
    print(row(f"ivf-flat uncentred nprobe={nprobe}", build_s, index_file_bytes(ivf), 0, query_s, recall_at_k(found, truth)))


def auto_threshold(base, queries, k, sizes, nprobe, rounds) -> None:
    """Flat vs IVF total time for build + `rounds` x len(queries) queries, at several sizes."""
    print(f"\n## auto threshold: build + {rounds} rounds x {len(queries)} queries (k={k}, IVF nprobe={nprobe})\n")
    print("| N        | flat build s | flat query s | flat total s | IVF nlist | IVF build s | IVF query s "
          "| IVF total s | IVF recall | faster |")
    print("|---------:|-------------:|-------------:|-------------:|----------:|------------:|------------:"
          "|------------:|-----------:|--------|")
    for n in sizes:
        data, ids = base[:n], np.arange(n, dtype=np.int64)
        _, truth = numpy_top_k(data, queries, k)
        flat, flat_build = timed(build_index, ids, data, IndexSettings(kind="flat"))
        _, flat_query = timed(search, flat, queries, k)
        del flat
        ivf, ivf_build = timed(build_index, ids, data, IndexSettings(kind="ivf", nprobe=nprobe))
        (_, found), ivf_query = timed(search, ivf, queries, k)
        flat_total, ivf_total = flat_build + rounds * flat_query, ivf_build + rounds * ivf_query
        faster = "IVF" if ivf_total < flat_total else "flat"
        print(f"| {n:>8,} | {flat_build:>12.2f} | {flat_query:>12.3f} | {flat_total:>12.2f} | {ivf.settings.nlist:>9} "
              f"| {ivf_build:>11.2f} | {ivf_query:>11.3f} | {ivf_total:>11.2f} | {recall_at_k(found, truth):>10.3f} "
              f"| {faster:<6} |")
        del ivf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--nlist", type=int, default=None, help="default: alkit's default_nlist(N)")
    parser.add_argument("--nprobe", type=str, default="4,8,16,32")
    parser.add_argument("--pq", type=int, default=128, help="IVF-PQ bytes per vector (auto uses D/4); 0 skips IVF-PQ")
    parser.add_argument("--max-load", type=float, default=1.0, help="refuse to run above this 1-min load average")
    parser.add_argument("--force", action="store_true", help="run even above --max-load")
    parser.add_argument("--hnsw", action="store_true", help="also HNSW (slow to build at 1M on few cores)")
    parser.add_argument("--threshold-sizes", type=str, default="10000,30000,100000,300000",
                        help="sizes for the auto-threshold table (each <= --n); empty skips it")
    parser.add_argument("--rounds", type=int, default=10, help="query rounds in the auto-threshold workload")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="faiss OpenMP and numpy BLAS threads")
    args = parser.parse_args()

    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if load[0] > args.max_load and not args.force:
        raise SystemExit(f"load {load[0]:.2f} > --max-load {args.max_load}; rerun on an idle machine or pass --force")
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(args.threads)
    threadpool_limits(args.threads)

    start = time.perf_counter()
    base, queries = make_data(args.n, args.queries, args.dim, args.clusters, args.seed)
    print(f"# FAISS {faiss.__version__}, {faiss.omp_get_max_threads()} thread(s), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; times are CPU seconds; "
          f"data generated in {time.perf_counter() - start:.1f} s ({base.nbytes / 2**30:.2f} GiB)")
    sample = base[np.random.default_rng(1).choice(args.n, 2000, replace=False)]
    pair = sample[:1000] @ sample[1000:].T
    print(f"# cosine of random pairs: mean {pair.mean():.2f}; query top-1 / top-{args.k} cosine: ", end="")
    top_scores, _ = numpy_top_k(base[: min(args.n, 100_000)], queries[:100], args.k)
    print(f"{top_scores[:, 0].mean():.2f} / {top_scores[:, -1].mean():.2f} (first 100k)")
    nlist = args.nlist or default_nlist(args.n)
    nprobes = [int(p) for p in args.nprobe.split(",") if p]
    compare_methods(base, queries, args.k, nlist, nprobes, args.pq, args.hnsw)
    sizes = [int(s) for s in args.threshold_sizes.split(",") if s and int(s) <= args.n]
    if sizes:
        auto_threshold(base, queries, args.k, sizes, IndexSettings().nprobe, args.rounds)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
