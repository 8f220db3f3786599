"""The error of a send that the network layer cannot complete."""


class NetworkError(Exception):
    """A send that cannot proceed; ``errno`` is what the socket call returns."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.errno = code
