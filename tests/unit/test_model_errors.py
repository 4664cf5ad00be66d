"""Model errors name the object, what is wrong and the fix."""

from __future__ import annotations

import pytest

from batchscore.errors import ModelError
from batchscore.models import compile_model


class RandomForestClasifier:  # a misspelt, unscorable class: no predict()
    pass


def test_unsupported_estimator_names_the_closest_supported_one() -> None:
    with pytest.raises(
        ModelError,
        match=r"Model 'm' is a .*RandomForestClasifier.*no predict\(\).*Closest supported: 'RandomForestClassifier'",
    ):
        compile_model(RandomForestClasifier(), model_name="m")
