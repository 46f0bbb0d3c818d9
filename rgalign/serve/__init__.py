"""Serving with NVIDIA Triton (SPEC §6), one folder per concern:

- server/: the ``tritonserver`` process (binary and environment, leftovers, lifecycle);
- repository/: `deploy` writes a model repository from an export (configs as protobuf);
- models/: the python-backend step models Triton loads (they run `rgalign.inference`);
- client.py: the one client (sync and asyncio, HTTP and gRPC), also used by `rgalign bench`.

Nothing here imports `rgalign.export` or `rgalign.training`: an export is read through its
manifest (`rgalign.artifacts.manifest`).
"""
