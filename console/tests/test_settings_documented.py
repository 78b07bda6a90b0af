"""Every environment variable console/settings.py reads is documented where operators look."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READ = re.compile(r'env_(?:str|bool|int|float|list|choice|secret|cpus)\(\s*"([A-Z0-9_]+)"')


def read_variables() -> set[str]:
    return set(READ.findall((ROOT / "console" / "settings.py").read_text()))


def test_settings_reads_variables_at_all() -> None:
    assert {"DATABASE_URL", "REDIS_URL", "API_KEY_PEPPER", "INFERENCE_MODEL"} <= read_variables()


def test_every_variable_is_in_env_example() -> None:
    lines = (ROOT / "deploy" / ".env.example").read_text().splitlines()
    documented = {line.split("=", 1)[0] for line in lines if "=" in line and line[0] != "#"}
    missing = read_variables() - documented
    assert not missing, f"not in deploy/.env.example: {sorted(missing)}"


def test_every_variable_is_in_the_readme_or_a_doc() -> None:
    text = (ROOT / "README.md").read_text() + "".join(
        path.read_text() for path in (ROOT / "docs").glob("*.md")
    )
    missing = {name for name in read_variables() if f"`{name}`" not in text}
    assert not missing, f"undocumented: {sorted(missing)}"
