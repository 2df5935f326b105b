"""A PEP 517 build backend in the standard library alone, so `pip install ./clients/python` works offline and in a
fresh virtualenv without setuptools or wheel (Debian's venv has no `wheel`). It builds exactly one pure-Python
package: `bunq_sessiond/`, with the metadata of `pyproject.toml`'s [project] table."""

import base64
import hashlib
import io
import os
import tarfile
import zipfile

try:
    import tomllib  # Python 3.11+
except ImportError:  # pragma: no cover - older Pythons read the few keys by hand
    tomllib = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "bunq_sessiond"


def _project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        text = file.read()
    if tomllib is not None:
        return tomllib.loads(text.decode())["project"]
    project, section = {}, None
    for line in text.decode().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "project" and "=" in line and line.split("=", 1)[0].strip() in ("name", "version", "description", "requires-python"):
            key, value = (part.strip() for part in line.split("=", 1))
            project[key] = value.strip('"')
    return project


def _metadata():
    project = _project()
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {project['version']}",
             f"Summary: {project.get('description', '')}", f"Requires-Python: {project.get('requires-python', '>=3.9')}"]
    readme = os.path.join(ROOT, "README.md")
    body = ""
    if os.path.exists(readme):
        lines.append("Description-Content-Type: text/markdown")
        with open(readme, encoding="utf-8") as file:
            body = "\n" + file.read()
    return "\n".join(lines) + "\n" + body, project


def _files():
    for directory, _, names in os.walk(os.path.join(ROOT, PACKAGE)):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                yield path, os.path.relpath(path, ROOT)


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    metadata, project = _metadata()
    distribution = f"{project['name']}-{project['version']}"
    wheel_name = f"{distribution}-py3-none-any.whl"
    records = []

    def add(archive, name, data):
        archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{name},sha256={digest},{len(data)}")

    with zipfile.ZipFile(os.path.join(wheel_directory, wheel_name), "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in _files():
            with open(path, "rb") as file:
                add(archive, name, file.read())
        info = f"{distribution}.dist-info"
        add(archive, f"{info}/METADATA", metadata.encode())
        add(archive, f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: stdlib_backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        records.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(records) + "\n")
    return wheel_name


def build_sdist(sdist_directory, config_settings=None):
    _, project = _metadata()
    distribution = f"{project['name']}-{project['version']}"
    name = f"{distribution}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as archive:
        for relative in ["pyproject.toml", "README.md", "_build/stdlib_backend.py"] + [n for _, n in _files()]:
            archive.add(os.path.join(ROOT, relative), arcname=f"{distribution}/{relative}")
        metadata, _ = _metadata()
        data = metadata.encode()
        info = tarfile.TarInfo(f"{distribution}/PKG-INFO")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return name
