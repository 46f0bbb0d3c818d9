"""Serving with NVIDIA Triton (SPEC §6), one folder per concern:

- server/: the ``tritonserver`` process (binary and environment, leftovers, lifecycle, the
  response cache's flags and counters);
- repository/: `deploy` writes a model repository from an export (configs as protobuf), in the
  fused or the ensemble layout;
- models/: the python-backend models Triton loads (the ensemble's steps and the fused model; they
  run `rgalign.inference`);
- client.py: the one client (sync and asyncio, HTTP and gRPC), also `rgalign bench`'s fallback
  where NVIDIA's perf_analyzer cannot run.

Nothing here imports `rgalign.export` or `rgalign.training`: an export is read through its
manifest (`rgalign.artifacts.manifest`).
"""
