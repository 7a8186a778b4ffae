"""MkDocs hook: reference material generated from the code, and docstrings made to read well as Markdown.

- ``<!-- train-config-fields -->`` becomes a table of :class:`pipeline.core.config.TrainConfig`'s
  fields (name, type, default, description) read from the pydantic model itself, or the
  help of the ``train`` flag that sets a field the model leaves undescribed: the page
  cannot drift from the code.
- The docstrings use Sphinx roles (``:func:`name```); mkdocstrings renders Markdown, where a
  role would show as literal text. The role is dropped and the name stays as code.
"""

from __future__ import annotations

import re
from typing import Any

FIELDS_MARKER = "<!-- train-config-fields -->"
ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):(?=<code>)")


def _type_name(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = re.sub(r"\b(?:typing|pathlib|pipeline\.core\.months)\.", "", text)
    return text.replace("NoneType", "None")


def _fields_table() -> str:
    from pydantic_core import PydanticUndefined

    from pipeline.cli import cli
    from pipeline.core.config import TrainConfig

    # A field without a description reads as the help of the `train` flag that sets it.
    flags = {param.name: param for param in cli.commands["train"].params}
    lines = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in TrainConfig.model_fields.items():
        if field.is_required():
            default = "required"
        elif field.default is PydanticUndefined:
            default = ""
        else:
            default = f"`{field.default!r}`"
        kind = _type_name(field.annotation).replace("|", "\\|")
        flag = flags.get(name)
        meaning = field.description or (f"`{flag.opts[0]}`: {flag.help or ''}" if flag is not None else "")
        meaning = meaning.replace("|", "\\|")
        lines.append(f"| `{name}` | `{kind}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if FIELDS_MARKER in markdown:
        markdown = markdown.replace(FIELDS_MARKER, _fields_table())
    return markdown


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return ROLE.sub("", html)


__all__ = ["on_page_content", "on_page_markdown"]
