"""mkdocs hook: the settings reference page, generated from ``yolotrain.config.SETTINGS`` at every build.

The page is never written to ``docs/``: it exists only in the build, so it cannot drift from the
declarations (``yolotrain help`` prints the same ones, see ``yolotrain.config_help``).
"""

from mkdocs.structure.files import File

from yolotrain.config_help import reference_markdown

PAGE = "settings.md"


def on_files(files, config):
    """Add the generated settings page to the site's files."""
    files.append(File.generated(config, PAGE, content=reference_markdown()))
    return files
