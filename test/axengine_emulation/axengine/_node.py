"""NodeArg: name, dtype and shape of one model input or output (as pyaxengine reports them)."""


class NodeArg:
    """One input or output of one shape group."""

    def __init__(self, name: str, dtype, shape: tuple) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = shape

    def __repr__(self) -> str:
        return f'NodeArg(name={self.name!r}, dtype={self.dtype}, shape={self.shape})'
