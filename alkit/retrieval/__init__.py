"""FAISS retrieval adapter: build/search/persist an inner-product index over item embeddings,
candidate retrieval for selection (SEALS / AnchorAL) and near-duplicate clusters.

One job per module: `settings` (index kinds, settings, the `auto` rules), `index` (build, add,
search, GPU), `store` (persist, load, ensure an index covers the items), `manifest`, `errors`,
`neighbours` (candidates near queries), `dedup` (near-duplicate clusters). faiss is imported
inside functions only, so importing this package (or `settings`) stays cheap.
"""
