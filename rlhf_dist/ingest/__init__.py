"""The comparison-ingest service: a separate gRPC process that buffers human comparisons.

Deliberately empty of imports: `rlhf_dist.ingest.schema` needs only pyarrow, and nothing
pulls in gRPC until `client`, `server` or `cli` is imported. See docs/INGEST.md.

Modules: schema (dataclasses + the one Arrow schema), validate (input checks), log (framed
segment files), store (state + group commit), server / auth (gRPC), client (Python client),
terminal (labeling for a person), export (Parquet), cli (`rlhf-dist ingest ...`),
process (the server as a child process).
"""
