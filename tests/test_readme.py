"""README stays true: every setting and every result field is documented."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices

from config.settings import Settings
from worker.model.results import RESULT_FIELDS, Outcome

README = (Path(__file__).parent.parent / "README.md").read_text()


def variable_names() -> list[str]:
    names = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.append(
            str(alias.choices[0])
            if isinstance(alias, AliasChoices)
            else f"STREAMCTL_{name.upper()}"
        )
    return names


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [name for name in variable_names() if f"| `{name}` |" not in README]
    assert missing == []


def test_every_result_field_and_outcome_is_documented() -> None:
    assert [field for field in RESULT_FIELDS if f"| `{field}` |" not in README] == []
    assert [o.value for o in Outcome if f"`{o.value}`" not in README] == []
