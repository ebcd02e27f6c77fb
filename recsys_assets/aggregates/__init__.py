"""Daily aggregates and their sums over artifact windows (SPEC §3).

- `daily`: a day's aggregates from its canonical events (pure: frames and `Coded` matrices);
- `ids`: the tenant/surface's id space, the same codes on every day;
- `store`: a day's aggregates on storage, pair kinds as sparse matrices in those codes;
- `window`: a window's sums, kept as states (`state + new day - expired day`);
- `coded`: the id-ordered matrices the artifact builders read;
- `assets`: the `daily_aggregates` asset.

It stands on `events` (the canonical store) and is read by `artifacts`, `signals` and
`quality`; it imports none of them.
"""
