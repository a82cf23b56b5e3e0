"""Result: labelled arrays subject x time x variable, convertible to tidy or wide tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from medtwin.core.errors import NotFoundError


@dataclass(frozen=True)
class Result:
    """The outcome of :func:`~medtwin.core.simulate.simulate`.

    ``values[i, k, v]`` is variable ``variables[v]`` of subject ``subjects[i]`` at
    ``times[k]`` [min since start]. Variables are labelled ``"name [unit]"``: the model's
    states, outputs and inputs (an input's row at ``t`` is what was held over the step
    starting at ``t``; NaN on the last row), the sensor reading ``CGM [mg/dL]`` when glucose
    is sensed, and ``meal [g]`` announced at ``t``. ``meta`` holds the provenance.
    """

    subjects: tuple[str, ...]
    times: np.ndarray
    variables: tuple[str, ...]
    values: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def _index(self, variable: str) -> int:
        if variable in self.variables:
            return self.variables.index(variable)
        bare = [i for i, v in enumerate(self.variables) if v.split(" [")[0] == variable]
        if len(bare) == 1:
            return bare[0]
        raise NotFoundError(f"no variable {variable!r}; known: {', '.join(self.variables)}")

    def __getitem__(self, variable: str) -> np.ndarray:
        """Values of one variable (label or bare name), shaped ``(n_subjects, n_times)``."""
        return self.values[:, :, self._index(variable)]

    def subject_index(self, subject: str) -> int:
        """Row of ``subject``; :class:`NotFoundError` if it was not simulated."""
        try:
            return self.subjects.index(subject)
        except ValueError:
            raise NotFoundError(
                f"subject {subject!r} not in this result; known: {', '.join(self.subjects)}"
            ) from None

    def to_dataframe(self, form: Literal["long", "wide"] = "long") -> pd.DataFrame:
        """``"long"`` (tidy): one row per subject, time and variable (columns subject, time,
        variable, value). ``"wide"``: one row per subject and time, one column per variable."""
        n, nt, nv = self.values.shape
        if form == "wide":
            df = pd.DataFrame(self.values.reshape(n * nt, nv), columns=list(self.variables))
            df.insert(0, "time", np.tile(self.times, n))
            df.insert(0, "subject", np.repeat(np.array(self.subjects, dtype=object), nt))
            return df
        if form == "long":
            return pd.DataFrame(
                {
                    "subject": np.repeat(np.array(self.subjects, dtype=object), nt * nv),
                    "time": np.tile(np.repeat(self.times, nv), n),
                    "variable": np.tile(np.array(self.variables, dtype=object), n * nt),
                    "value": self.values.reshape(-1),
                }
            )
        raise ValueError(f"form must be 'long' or 'wide', got {form!r}")
