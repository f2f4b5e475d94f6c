"""Session base class with pyaxengine's input/output checks and group lookups."""

from __future__ import annotations


class SessionOptions:
    """Placeholder, as in pyaxengine."""


class Session:
    """What every provider session shares: per-group input/output lists and feed checks."""

    def __init__(self) -> None:
        self._shape_count = 0
        self._inputs: list = []
        self._outputs: list = []

    def _validate_input(self, feed: dict) -> None:
        missing = [i.name for i in self.get_inputs() if i.name not in feed]
        if missing:
            raise ValueError(f'Required inputs ({missing}) are missing from input feed '
                             f'({list(feed)}).')

    def _validate_output(self, output_names) -> None:
        if output_names is not None:
            for name in output_names:
                if name not in [o.name for o in self.get_outputs()]:
                    raise ValueError(f"Output name '{name}' is not in model outputs name list.")

    # pyaxengine checks `shape_group > count` (not >=): asking for group `count` reaches the
    # list and raises IndexError. Callers probing the group count must accept both.
    def get_inputs(self, shape_group: int = 0) -> list:
        """Return the inputs of one shape group."""
        if shape_group > self._shape_count:
            raise ValueError(f"Shape group '{shape_group}' is out of range, total "
                             f'{self._shape_count}.')
        return self._inputs[shape_group]

    def get_outputs(self, shape_group: int = 0) -> list:
        """Return the outputs of one shape group."""
        if shape_group > self._shape_count:
            raise ValueError(f"Shape group '{shape_group}' is out of range, total "
                             f'{self._shape_count}.')
        return self._outputs[shape_group]
