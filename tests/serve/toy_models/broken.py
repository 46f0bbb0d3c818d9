"""Toy python-backend model that cannot load: ``initialize`` raises. A repository holding it must
make ``TritonServer.start()`` fail with the server's log, not hang."""


class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("broken toy model: refusing to load")

    def execute(self, requests):  # pragma: no cover - never loaded
        return []
