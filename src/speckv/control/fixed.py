"""Fixed speculation length (Leviathan et al. 2023; transformers' "constant" schedule)."""

from speckv.control.base import Controller


class Fixed(Controller):
    def __init__(self, gamma: int):
        self.gamma = gamma
        self.name = f"fixed:{gamma}"

    def budget(self) -> int:
        return self.gamma


class Autoregressive(Controller):
    """The target alone, through the same loop: the baseline every speedup is measured against."""

    name = "autoregressive"
    uses_draft = False

    def budget(self) -> int:
        return 0
