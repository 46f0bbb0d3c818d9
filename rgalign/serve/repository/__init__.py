"""Writing a Triton model repository from an export (`rgalign deploy`):

- deploy.py: `deploy(EXPORT, REPO, DeployOptions)`, the step models and the ensemble, atomic;
- signature.py: what deploy reads from the export (tensor specs, checked graph files);
- config.py: `config.pbtxt` as protobuf messages (`model_config_pb2`), never f-strings;
- readme.py: the README written into every repository.

The python-backend entry points it writes import `rgalign.serve.models.<step>`.
"""
