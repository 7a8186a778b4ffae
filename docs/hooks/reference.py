"""MkDocs hook: reference material generated from the code, and docstrings made to read well as Markdown.

- ``<!-- train-config-fields -->`` (``retrain-``, ``score-``) becomes a table of the config
  model's fields (name, type, default, description) read from the pydantic model itself
  (:class:`pipeline.core.config.TrainConfig`, ``RetrainConfig``, ``ScoreConfig``): the page
  cannot drift from the code, nor from the flags, which are generated from the same fields.
- The docstrings use Sphinx roles (``:func:`name```); mkdocstrings renders Markdown, where a
  role would show as literal text. The role is dropped and the name stays as code.
"""

from __future__ import annotations

import re
from typing import Any

#: Marker -> the config model whose fields replace it.
FIELDS_MARKERS = {
    "<!-- train-config-fields -->": "TrainConfig",
    "<!-- retrain-config-fields -->": "RetrainConfig",
    "<!-- score-config-fields -->": "ScoreConfig",
}
ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):(?=<code>)")


def _type_name(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = re.sub(r"\b(?:typing|pathlib|pipeline\.core\.months)\.", "", text)
    return text.replace("NoneType", "None")


def _fields_table(model_name: str) -> str:
    from pydantic_core import PydanticUndefined

    from pipeline.core import config

    model = getattr(config, model_name)
    lines = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if field.is_required():
            default = "required"
        elif field.default is PydanticUndefined:
            default = "from the environment" if field.default_factory is not None else ""
        else:
            default = f"`{field.default!r}`"
        kind = _type_name(field.annotation).replace("|", "\\|")
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | `{kind}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    for marker, model_name in FIELDS_MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, _fields_table(model_name))
    return markdown


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return ROLE.sub("", html)


__all__ = ["on_page_content", "on_page_markdown"]
