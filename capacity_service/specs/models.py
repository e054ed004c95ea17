"""The network specs (FCDNN, CNN, RNN) and the checks of an N against their inputs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from capacity_service.specs.base import Frozen, Int


class FCDNNSpec(Frozen):
    """Fully connected network: `depth` hidden layers of `width` ReLU units, 2 outputs."""

    kind: Literal["fcdnn"] = "fcdnn"
    width: Int = Field(32, ge=1, description="units per hidden layer")
    depth: Int = Field(1, ge=1, description="number of hidden layers")
    n_in: Int | None = Field(None, ge=1, description="input bits; defaults to width")

    @property
    def input_bits(self) -> int:
        return self.n_in if self.n_in is not None else self.width


class CNNSpec(Frozen):
    """Convolution stack on a 1 x S x S image of random bits, three 2x2 max-pools, FC head."""

    kind: Literal["cnn"] = "cnn"
    kernel: Literal[3, 5] = Field(3, description="kernel size, the same in every layer")
    conv_layers: Int = Field(3, ge=3, le=9, description="number of convolution layers")
    channels: Int = Field(8, ge=1, description="channels of every convolution layer")
    input_size: Int = Field(
        32, ge=8, description="image side; a multiple of 8", json_schema_extra={"multipleOf": 8}
    )
    fc_hidden: Int = Field(0, ge=0, description="units of a hidden FC layer (0: none)")

    @field_validator("input_size")
    @classmethod
    def _divisible_by_pools(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8 (three 2x2 max-pools halve it 3 times)")
        return value

    @property
    def input_bits(self) -> int:
        return self.input_size * self.input_size


class RNNSpec(Frozen):
    """Recurrent network over `steps` input vectors; one label read at the last step."""

    kind: Literal["lstm", "gru", "rnn"] = "lstm"
    hidden: Int = Field(32, ge=1, description="hidden state size")
    n_in: Int = Field(32, ge=1, description="input bits per step")
    steps: Int = Field(5, ge=1, description="sequence length T")

    @property
    def input_bits(self) -> int:
        return self.steps * self.n_in


ModelSpec = Annotated[FCDNNSpec | CNNSpec | RNNSpec, Field(discriminator="kind")]
MODEL_KINDS = ("fcdnn", "cnn", "lstm", "gru", "rnn")


def check_n_fits(model: FCDNNSpec | CNNSpec | RNNSpec, n: int) -> None:
    """Raise ValueError when N distinct inputs cannot exist for this model's input size."""
    # compare bit lengths first: 1 << input_bits of a huge model would not fit in memory
    if model.input_bits < n.bit_length() and n > 1 << model.input_bits:
        raise ValueError(
            f"n = {n} exceeds the 2^{model.input_bits} = {1 << model.input_bits} distinct "
            f"inputs of {model.input_bits} bits; lower n or enlarge the input "
            "(n_in, width or steps)"
        )


def check_sample_count(model: FCDNNSpec | CNNSpec | RNNSpec, n: int, field: str) -> None:
    """ValueError naming `field` unless 2 <= N <= the distinct inputs of the model."""
    if n < 2:
        raise ValueError(f"{field}: every N must be >= 2, got {n}")
    try:
        check_n_fits(model, n)
    except ValueError as error:
        raise ValueError(f"{field}: {error}") from None
