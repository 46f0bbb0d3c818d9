"""Writing a Triton model repository from an export (`rgalign deploy`):

- deploy.py: `deploy(EXPORT, REPO, DeployOptions)`, either layout, atomic;
- fused.py: the fused layout's one model (the whole Pipeline in one python model);
- ensemble.py: the ensemble layout's top model chaining the four steps deploy writes;
- signature.py: what deploy reads from the export (tensor specs, checked graph files);
- config.py: `config.pbtxt` as protobuf messages (`model_config_pb2`), never f-strings;
- readme.py: the README written into every repository.

The python-backend entry points it writes import `rgalign.serve.models.<step>` (or ``fused``).
"""
